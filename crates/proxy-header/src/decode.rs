//! [`decode`]: both versions, pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crc_fast::{CrcAlgorithm, Digest};

use crate::{
    Decoded, Endpoints, Error, Header, MAX_V1_LEN, V2_FIXED_LEN, V2_SIGNATURE, Version, Versions,
};

/// Raw values of the spec (HAProxy's `proxy-protocol.txt`, sections 2.1 and 2.2).
mod consts {
    /// The version 1 line starts with these 6 bytes.
    pub(crate) const V1_PREFIX: &[u8; 6] = b"PROXY ";
    /// The shortest version 1 header: `PROXY UNKNOWN\r\n`.
    pub(crate) const V1_MIN_LEN: usize = 15;
    /// Version 2 commands (low nibble of byte 13).
    pub(crate) const CMD_LOCAL: u8 = 0x0;
    pub(crate) const CMD_PROXY: u8 = 0x1;
    /// Family and transport (byte 14).
    pub(crate) const UNSPEC: u8 = 0x00;
    pub(crate) const TCP4: u8 = 0x11;
    pub(crate) const UDP4: u8 = 0x12;
    pub(crate) const TCP6: u8 = 0x21;
    pub(crate) const UDP6: u8 = 0x22;
    pub(crate) const UNIX_STREAM: u8 = 0x31;
    pub(crate) const UNIX_DGRAM: u8 = 0x32;
    /// Address bytes of each family: two addresses and, for IP, two ports.
    pub(crate) const INET_LEN: usize = 12;
    pub(crate) const INET6_LEN: usize = 36;
    pub(crate) const UNIX_LEN: usize = 216;
    /// TLV type of the CRC-32C of the header (section 2.2.5).
    pub(crate) const TLV_CRC32C: u8 = 0x03;
}

pub(crate) use consts::{CMD_LOCAL, CMD_PROXY, TCP4, TCP6, TLV_CRC32C, UNSPEC, V1_PREFIX};

/// Decodes the header at the start of `buf`, in one of the `accept`ed versions.
///
/// Returns [`Decoded::NeedMore`] while `buf` is a valid beginning of a header (so every byte
/// of it belongs to the header), and [`Decoded::Done`] with the header's length once it is
/// complete; bytes after that length are not looked at. Never panics and never allocates.
///
/// # Errors
///
/// As soon as `buf` cannot begin a valid header: see [`Error`]. A version the receiver does
/// not accept is [`Error::NotAccepted`].
pub fn decode(buf: &[u8], accept: Versions) -> Result<Decoded<Header>, Error> {
    if buf.is_empty() {
        let shortest = match accept {
            Versions::V2 => V2_FIXED_LEN,
            Versions::V1 | Versions::Any => consts::V1_MIN_LEN,
        };
        return Ok(Decoded::NeedMore(shortest));
    }
    let version = if let Some(offset) = mismatch(buf, consts::V1_PREFIX) {
        if let Some(v2_offset) = mismatch(buf, &V2_SIGNATURE) {
            // Report the byte where the longer match breaks.
            let offset = offset.max(v2_offset);
            let byte = buf.get(offset).copied().unwrap_or_default();
            return Err(Error::Signature { offset, byte });
        }
        Version::V2
    } else {
        Version::V1
    };
    if !accept.accepts(version) {
        return Err(Error::NotAccepted { found: version });
    }
    match version {
        Version::V1 => decode_v1(buf),
        Version::V2 => decode_v2(buf),
    }
}

/// Where `buf` first differs from `prefix`, if it does within their common length.
fn mismatch(buf: &[u8], prefix: &[u8]) -> Option<usize> {
    buf.iter()
        .zip(prefix)
        .position(|(byte, expected)| byte != expected)
}

/// Version 1; `buf` begins with a prefix of `PROXY `.
fn decode_v1(buf: &[u8]) -> Result<Decoded<Header>, Error> {
    let window = buf.get(..MAX_V1_LEN).unwrap_or(buf);
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() >= MAX_V1_LEN {
            return Err(Error::V1TooLong);
        }
        if window.contains(&b'\n') {
            return Err(Error::V1Malformed("a line feed without a carriage return"));
        }
        let need = consts::V1_MIN_LEN.saturating_sub(window.len()).max(1);
        return Ok(Decoded::NeedMore(need));
    };
    if cr + 2 > MAX_V1_LEN {
        // The LF would be byte 108 or later.
        return Err(Error::V1TooLong);
    }
    match window.get(cr + 1) {
        None => return Ok(Decoded::NeedMore(1)),
        Some(b'\n') => {}
        Some(_) => {
            return Err(Error::V1Malformed(
                "a carriage return not followed by a line feed",
            ));
        }
    }
    // The prefix has no CR, so `cr` is past it.
    let line = window
        .get(consts::V1_PREFIX.len()..cr)
        .ok_or(Error::V1Malformed("too short"))?;
    let line = std::str::from_utf8(line).map_err(|_| Error::V1Malformed("not ASCII"))?;
    if line.contains('\n') {
        return Err(Error::V1Malformed("a line feed without a carriage return"));
    }
    let endpoints = v1_endpoints(line)?;
    Ok(Decoded::Done(
        Header {
            version: Version::V1,
            endpoints,
        },
        cr + 2,
    ))
}

/// The part of a version 1 line after `PROXY `.
fn v1_endpoints(line: &str) -> Result<Endpoints, Error> {
    // After UNKNOWN, the spec has the receiver ignore the rest of the line.
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Endpoints::Unknown);
    }
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or_default();
    let v6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(Error::V1Malformed(
                "protocol TCP4, TCP6 or UNKNOWN expected",
            ));
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Error::V1Malformed(
            "five fields separated by single spaces expected",
        ));
    };
    let ip = |text: &str| -> Result<IpAddr, Error> {
        if v6 {
            text.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| Error::V1Malformed("an IPv6 address expected after TCP6"))
        } else {
            text.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| Error::V1Malformed("an IPv4 address expected after TCP4"))
        }
    };
    Ok(Endpoints::Tcp {
        source: SocketAddr::new(ip(src)?, v1_port(sport)?),
        destination: SocketAddr::new(ip(dst)?, v1_port(dport)?),
    })
}

/// A decimal port, 0 to 65535, without a sign or leading zeros.
fn v1_port(text: &str) -> Result<u16, Error> {
    const BAD: Error = Error::V1Malformed("a port of 0 to 65535 without leading zeros expected");
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(BAD);
    }
    text.parse().map_err(|_| BAD)
}

/// Version 2; `buf` begins with a prefix of the signature.
fn decode_v2(buf: &[u8]) -> Result<Decoded<Header>, Error> {
    let Some(fixed) = buf.first_chunk::<V2_FIXED_LEN>() else {
        return Ok(Decoded::NeedMore(V2_FIXED_LEN - buf.len()));
    };
    let [.., version_command, family, len_hi, len_lo] = *fixed;
    if version_command >> 4 != 2 {
        return Err(Error::V2Version(version_command));
    }
    let command = version_command & 0x0f;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(Error::V2Command(version_command));
    }
    let len = u16::from_be_bytes([len_hi, len_lo]);
    let total = V2_FIXED_LEN + usize::from(len);
    // The family is judged before the rest arrives, so a bad one fails at once.
    let address_len = match (command, family_address_len(family)) {
        (CMD_PROXY, Err(error)) => return Err(error),
        (CMD_PROXY, Ok(need)) if need > usize::from(len) => {
            return Err(Error::AddressTooShort { family, len, need });
        }
        (_, Ok(need)) if need <= usize::from(len) => Some(need),
        // LOCAL: the spec has the receiver discard the whole block, family included, so a
        // family it cannot read is no reason to refuse; its TLVs are not checked then.
        _ => None,
    };
    let Some(header) = buf.get(..total) else {
        return Ok(Decoded::NeedMore(total - buf.len()));
    };
    if let Some(address_len) = address_len {
        check_tlvs(header, V2_FIXED_LEN + address_len)?;
    }
    let addresses = header.get(V2_FIXED_LEN..).unwrap_or_default();
    let endpoints = match (command, family) {
        (CMD_PROXY, TCP4) => tcp4(addresses),
        (CMD_PROXY, TCP6) => tcp6(addresses),
        (CMD_PROXY, _) => Endpoints::Unknown,
        _ => Endpoints::Local,
    };
    Ok(Decoded::Done(
        Header {
            version: Version::V2,
            endpoints,
        },
        total,
    ))
}

/// The address bytes of a family/transport byte, or why it is refused.
fn family_address_len(family: u8) -> Result<usize, Error> {
    match family {
        UNSPEC => Ok(0),
        TCP4 => Ok(consts::INET_LEN),
        TCP6 => Ok(consts::INET6_LEN),
        consts::UNIX_STREAM => Ok(consts::UNIX_LEN),
        consts::UDP4 | consts::UDP6 | consts::UNIX_DGRAM => Err(Error::Datagram(family)),
        _ => Err(Error::Family(family)),
    }
}

fn tcp4(addresses: &[u8]) -> Endpoints {
    let Some(&[a, b, c, d, e, f, g, h, sp1, sp2, dp1, dp2]) = addresses.first_chunk::<12>() else {
        // Checked by the caller: the length holds the addresses.
        return Endpoints::Unknown;
    };
    Endpoints::Tcp {
        source: SocketAddr::new(
            Ipv4Addr::new(a, b, c, d).into(),
            u16::from_be_bytes([sp1, sp2]),
        ),
        destination: SocketAddr::new(
            Ipv4Addr::new(e, f, g, h).into(),
            u16::from_be_bytes([dp1, dp2]),
        ),
    }
}

fn tcp6(addresses: &[u8]) -> Endpoints {
    let Some(block) = addresses.first_chunk::<36>() else {
        // Checked by the caller: the length holds the addresses.
        return Endpoints::Unknown;
    };
    let (src, rest) = block.split_at(16);
    let (dst, ports) = rest.split_at(16);
    let array16 = |s: &[u8]| <[u8; 16]>::try_from(s).unwrap_or_default();
    let (sport, dport) = match *ports {
        [a, b, c, d] => (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
        _ => (0, 0),
    };
    Endpoints::Tcp {
        source: SocketAddr::new(Ipv6Addr::from(array16(src)).into(), sport),
        destination: SocketAddr::new(Ipv6Addr::from(array16(dst)).into(), dport),
    }
}

/// Walks the TLVs from `start` to the end of `header`; each must fit, and a CRC-32C TLV must
/// match the header with its value zeroed (spec section 2.2.5).
fn check_tlvs(header: &[u8], start: usize) -> Result<(), Error> {
    let mut offset = start;
    while let Some(rest) = header.get(offset..).filter(|rest| !rest.is_empty()) {
        let Some(&[kind, len_hi, len_lo]) = rest.first_chunk::<3>() else {
            return Err(Error::Tlv { offset });
        };
        let len = u16::from_be_bytes([len_hi, len_lo]);
        let value_at = offset + 3;
        let end = value_at + usize::from(len);
        let Some(value) = header.get(value_at..end) else {
            return Err(Error::Tlv { offset });
        };
        if kind == TLV_CRC32C {
            let Ok(expected) = <[u8; 4]>::try_from(value) else {
                return Err(Error::CrcLength(len));
            };
            let expected = u32::from_be_bytes(expected);
            let computed = crc32c_zeroed(header, value_at);
            if computed != expected {
                return Err(Error::CrcMismatch { expected, computed });
            }
        }
        offset = end;
    }
    Ok(())
}

/// CRC-32C of `header` with the 4 bytes at `at` taken as zeros.
pub(crate) fn crc32c_zeroed(header: &[u8], at: usize) -> u32 {
    let mut digest = Digest::new(CrcAlgorithm::Crc32Iscsi);
    digest.update(header.get(..at).unwrap_or_default());
    digest.update(&[0; 4]);
    digest.update(header.get(at + 4..).unwrap_or_default());
    // A CRC-32 fits in 32 bits.
    u32::try_from(digest.finalize()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tlv, encode_v2};

    fn done(buf: &[u8], accept: Versions) -> (Header, usize) {
        match decode(buf, accept) {
            Ok(Decoded::Done(header, used)) => (header, used),
            other => panic!("{buf:?}: {other:?}"),
        }
    }

    fn tcp(source: &str, destination: &str) -> Endpoints {
        Endpoints::Tcp {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    const V2_TCP4: &[u8] =
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x03\x7f\x00\x00\x01\x30\x39\x04\x38";

    #[test]
    fn decodes_v1_lines() {
        let rows: &[(&[u8], Endpoints, usize)] = &[
            (
                b"PROXY TCP4 127.0.0.3 127.0.0.1 12345 1080\r\n\x05\x01\x00",
                tcp("127.0.0.3:12345", "127.0.0.1:1080"),
                43,
            ),
            (
                b"PROXY TCP6 ::1 2001:db8::2 65535 0\r\n",
                tcp("[::1]:65535", "[2001:db8::2]:0"),
                36,
            ),
            (b"PROXY UNKNOWN\r\n", Endpoints::Unknown, 15),
            (
                b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nGET",
                Endpoints::Unknown,
                35,
            ),
        ];
        for (buf, endpoints, used) in rows {
            let (header, n) = done(buf, Versions::V1);
            assert_eq!((header.endpoints, n), (*endpoints, *used), "{buf:?}");
            assert_eq!(header.version, Version::V1);
            assert_eq!(done(buf, Versions::Any), (header, n));
        }
    }

    #[test]
    fn rejects_malformed_v1_lines() {
        let rows: &[&[u8]] = &[
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2 3\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n",
            b"PROXY TCP4  127.0.0.1 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 127.0.0.1 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 01 2\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 65536 2\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 +1 2\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2 \r\n",
            b"PROXY TCP4 127.0.0.01 127.0.0.1 1 2\r\n",
            b"PROXY UDP4 127.0.0.1 127.0.0.1 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\rX",
            b"PROXY TCP4 127.0.0.1\n",
            b"PROXY \xff\r\n",
        ];
        for buf in rows {
            assert!(
                matches!(decode(buf, Versions::Any), Err(Error::V1Malformed(_))),
                "{buf:?}: {:?}",
                decode(buf, Versions::Any)
            );
        }
    }

    #[test]
    fn v1_is_at_most_107_bytes() {
        // The longest legal line is exactly 107 bytes.
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), MAX_V1_LEN);
        assert_eq!(done(longest, Versions::V1).1, MAX_V1_LEN);
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_V1_LEN - 1, b'x');
        assert_eq!(decode(&long, Versions::V1), Ok(Decoded::NeedMore(1)));
        long.push(b'x');
        assert_eq!(decode(&long, Versions::V1), Err(Error::V1TooLong));
        long.extend_from_slice(b"\r\n");
        assert_eq!(decode(&long, Versions::V1), Err(Error::V1TooLong));
        // A CR as byte 107 leaves no room for the LF, however many bytes follow.
        long.truncate(MAX_V1_LEN - 1);
        long.push(b'\r');
        assert_eq!(decode(&long, Versions::V1), Err(Error::V1TooLong));
        long.extend_from_slice(b"\nmore");
        assert_eq!(decode(&long, Versions::V1), Err(Error::V1TooLong));
    }

    #[test]
    fn decodes_v2_tcp4_and_tcp6() {
        let (header, used) = done(V2_TCP4, Versions::V2);
        assert_eq!(used, 28);
        assert_eq!(header.endpoints, tcp("127.0.0.3:12345", "127.0.0.1:1080"));
        assert_eq!(header.source(), Some("127.0.0.3:12345".parse().unwrap()));
        let mut v6 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(b"\x00\x01\xff\xff trailing");
        let (header, used) = done(&v6, Versions::Any);
        assert_eq!(used, 52);
        assert_eq!(header.endpoints, tcp("[2001:db8::1]:1", "[::1]:65535"));
    }

    #[test]
    fn v2_local_unspec_and_unix_keep_the_real_endpoints() {
        let rows: &[(&[u8], Endpoints)] = &[
            // LOCAL with UNSPEC, as HAProxy's health checks send it.
            (b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", Endpoints::Local),
            // LOCAL with addresses: ignored.
            (
                &[&V2_SIGNATURE[..], b"\x20\x11\x00\x0c", &[9; 12]].concat(),
                Endpoints::Local,
            ),
            // LOCAL with a family the spec does not define: the block is discarded.
            (b"\r\n\r\n\0\r\nQUIT\n\x20\x99\x00\x02ab", Endpoints::Local),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x00", Endpoints::Unknown),
            (
                &[&V2_SIGNATURE[..], b"\x21\x31\x00\xd8", &[b'/'; 216]].concat(),
                Endpoints::Unknown,
            ),
        ];
        for (buf, endpoints) in rows {
            let (header, used) = done(buf, Versions::V2);
            assert_eq!((header.endpoints, used), (*endpoints, buf.len()), "{buf:?}");
        }
    }

    #[test]
    fn rejects_bad_v2_headers_before_the_body_arrives() {
        let rows: &[(&[u8], Error)] = &[
            (
                b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c",
                Error::V2Version(0x11),
            ),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x22\x11\x00\x0c",
                Error::V2Command(0x22),
            ),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c",
                Error::Datagram(0x12),
            ),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x21\x22\x00\x24",
                Error::Datagram(0x22),
            ),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x21\x32\x00\xd8",
                Error::Datagram(0x32),
            ),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x10\x00\x0c", Error::Family(0x10)),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x41\x00\x0c", Error::Family(0x41)),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0b",
                Error::AddressTooShort {
                    family: 0x11,
                    len: 11,
                    need: 12,
                },
            ),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x0c",
                Error::AddressTooShort {
                    family: 0x21,
                    len: 12,
                    need: 36,
                },
            ),
        ];
        for (buf, error) in rows {
            assert_eq!(decode(buf, Versions::V2), Err(error.clone()), "{buf:?}");
        }
    }

    #[test]
    fn tlvs_are_skipped_but_must_fit() {
        let endpoints = tcp("10.0.0.1:1", "10.0.0.2:2");
        let mut buf = Vec::new();
        let tlvs = [
            Tlv {
                kind: 0x01,
                value: b"h2",
            },
            Tlv {
                kind: 0x04,
                value: &[0; 5],
            },
        ];
        encode_v2(&endpoints, &tlvs, false, &mut buf).unwrap();
        assert_eq!(
            done(&buf, Versions::V2),
            (
                Header {
                    version: Version::V2,
                    endpoints
                },
                buf.len()
            )
        );
        // A TLV header cut short by the length.
        let mut cut = buf.clone();
        cut.truncate(buf.len() - 6);
        cut[15] -= 6;
        assert_eq!(decode(&cut, Versions::V2), Err(Error::Tlv { offset: 33 }));
        // A value running past the end.
        let mut long = buf.clone();
        long.truncate(buf.len() - 1);
        long[15] -= 1;
        assert_eq!(decode(&long, Versions::V2), Err(Error::Tlv { offset: 33 }));
    }

    #[test]
    fn crc32c_tlv_is_verified() {
        let endpoints = tcp("127.0.0.3:40000", "127.0.0.1:1080");
        let mut buf = Vec::new();
        encode_v2(
            &endpoints,
            &[Tlv {
                kind: 0x02,
                value: b"example.com",
            }],
            true,
            &mut buf,
        )
        .unwrap();
        assert_eq!(done(&buf, Versions::V2).0.endpoints, endpoints);
        // No flipped bit outside the signature gives a header (a longer length waits for
        // more bytes; everything else is refused), except in the CRC TLV's type byte, which
        // turns the CRC into another TLV.
        let crc_type_at = buf.len() - 7;
        for at in (V2_SIGNATURE.len()..buf.len()).filter(|&at| at != crc_type_at) {
            let mut bad = buf.clone();
            bad[at] ^= 0x01;
            let result = decode(&bad, Versions::V2);
            assert!(
                !matches!(result, Ok(Decoded::Done(..))),
                "flip at {at} went unnoticed: {result:?}"
            );
        }
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(
            decode(&bad, Versions::V2),
            Err(Error::CrcMismatch { .. })
        ));
        // A known vector: the CRC-32C of the header with the field zeroed.
        let at = buf.len() - 4;
        let expected = u32::from_be_bytes(buf[at..].try_into().unwrap());
        let mut zeroed = buf.clone();
        zeroed[at..].fill(0);
        assert_eq!(crc_fast::crc32_iscsi(&zeroed) as u32, expected);
        // A CRC TLV of the wrong size.
        let mut short = Vec::new();
        encode_v2(
            &Endpoints::Unknown,
            &[Tlv {
                kind: 0x03,
                value: &[0; 3],
            }],
            false,
            &mut short,
        )
        .unwrap();
        assert_eq!(decode(&short, Versions::V2), Err(Error::CrcLength(3)));
    }

    #[test]
    fn short_input_needs_more_and_garbage_fails_at_once() {
        assert_eq!(decode(b"", Versions::Any), Ok(Decoded::NeedMore(15)));
        assert_eq!(decode(b"", Versions::V2), Ok(Decoded::NeedMore(16)));
        assert_eq!(decode(b"PRO", Versions::Any), Ok(Decoded::NeedMore(12)));
        assert_eq!(
            decode(&V2_TCP4[..5], Versions::Any),
            Ok(Decoded::NeedMore(11))
        );
        assert_eq!(
            decode(&V2_TCP4[..16], Versions::Any),
            Ok(Decoded::NeedMore(12))
        );
        assert_eq!(
            decode(b"\x05\x01\x00", Versions::Any),
            Err(Error::Signature {
                offset: 0,
                byte: 0x05
            })
        );
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n", Versions::Any),
            Err(Error::Signature {
                offset: 0,
                byte: b'G'
            })
        );
        assert_eq!(
            decode(b"PROXI", Versions::Any),
            Err(Error::Signature {
                offset: 4,
                byte: b'I'
            })
        );
        assert_eq!(
            decode(b"\r\n\r\n\0\r\nQUIT\r", Versions::Any),
            Err(Error::Signature {
                offset: 11,
                byte: b'\r'
            })
        );
        assert_eq!(
            decode(b"PROXY TCP4", Versions::V2),
            Err(Error::NotAccepted { found: Version::V1 })
        );
        assert_eq!(
            decode(V2_TCP4, Versions::V1),
            Err(Error::NotAccepted { found: Version::V2 })
        );
    }
}
