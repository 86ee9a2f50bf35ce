//! Writing headers: for balancers, clients and tests.

use std::net::{IpAddr, SocketAddr};

use bytes::BufMut;

use crate::{
    Endpoints, Error, Header, V2_FIXED_LEN, V2_SIGNATURE, Version,
    decode::{CMD_LOCAL, CMD_PROXY, TCP4, TCP6, TLV_CRC32C, UNSPEC, V1_PREFIX, crc32c_zeroed},
};

/// One version 2 TLV: a type byte and a value of at most 65535 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The type (`0x01` ALPN, `0x02` authority, `0x04` no-op, ...).
    pub kind: u8,
    /// The value.
    pub value: &'a [u8],
}

/// Writes `header` in its own version, without TLVs.
pub fn encode(header: &Header, buf: &mut impl BufMut) {
    match header.version {
        Version::V1 => encode_v1(&header.endpoints, buf),
        Version::V2 => {
            // Without TLVs the length is at most 36: it always fits.
            let _ = encode_v2(&header.endpoints, &[], false, buf);
        }
    }
}

/// Writes a version 1 line. Version 1 has no `LOCAL`: [`Endpoints::Local`] is written as
/// `UNKNOWN`, which also tells the receiver to keep the real endpoints. Addresses of two
/// families are both written as IPv6 (IPv4-mapped).
pub fn encode_v1(endpoints: &Endpoints, buf: &mut impl BufMut) {
    buf.put_slice(V1_PREFIX);
    match *endpoints {
        Endpoints::Local | Endpoints::Unknown => buf.put_slice(b"UNKNOWN"),
        Endpoints::Tcp {
            source,
            destination,
        } => {
            let line = match same_family(source, destination) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    format!("TCP4 {src} {dst} {} {}", source.port(), destination.port())
                }
                (src, dst) => format!("TCP6 {src} {dst} {} {}", source.port(), destination.port()),
            };
            buf.put_slice(line.as_bytes());
        }
    }
    buf.put_slice(b"\r\n");
}

/// Writes a version 2 header with `tlvs` and, when `crc32c` is set, a CRC-32C TLV last.
/// [`Endpoints::Local`] is command `LOCAL` with family `UNSPEC`; [`Endpoints::Unknown`] is
/// command `PROXY` with family `UNSPEC`. Addresses of two families are both written as IPv6
/// (IPv4-mapped).
///
/// # Errors
///
/// [`Error::TooLong`] when the addresses and TLVs exceed 65535 bytes; nothing is written then.
pub fn encode_v2(
    endpoints: &Endpoints,
    tlvs: &[Tlv<'_>],
    crc32c: bool,
    buf: &mut impl BufMut,
) -> Result<(), Error> {
    let mut header = Vec::with_capacity(V2_FIXED_LEN + 36);
    header.extend_from_slice(&V2_SIGNATURE);
    let (command, family) = match *endpoints {
        Endpoints::Local => (CMD_LOCAL, UNSPEC),
        Endpoints::Unknown => (CMD_PROXY, UNSPEC),
        Endpoints::Tcp {
            source,
            destination,
        } => match same_family(source, destination) {
            (IpAddr::V4(_), IpAddr::V4(_)) => (CMD_PROXY, TCP4),
            _ => (CMD_PROXY, TCP6),
        },
    };
    header.extend_from_slice(&[0x20 | command, family, 0, 0]);
    if let Endpoints::Tcp {
        source,
        destination,
    } = *endpoints
    {
        match same_family(source, destination) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                header.extend_from_slice(&src.octets());
                header.extend_from_slice(&dst.octets());
            }
            (src, dst) => {
                header.extend_from_slice(&v6(src).octets());
                header.extend_from_slice(&v6(dst).octets());
            }
        }
        header.extend_from_slice(&source.port().to_be_bytes());
        header.extend_from_slice(&destination.port().to_be_bytes());
    }
    let crc = crc32c.then_some(Tlv {
        kind: TLV_CRC32C,
        value: &[0; 4],
    });
    let len = header.len() - V2_FIXED_LEN
        + tlvs
            .iter()
            .chain(&crc)
            .map(|tlv| 3 + tlv.value.len())
            .sum::<usize>();
    let Ok(len16) = u16::try_from(len) else {
        return Err(Error::TooLong { len });
    };
    for tlv in tlvs.iter().chain(&crc) {
        header.push(tlv.kind);
        // Within the total checked above.
        header.extend_from_slice(
            &u16::try_from(tlv.value.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        header.extend_from_slice(tlv.value);
    }
    if let Some(length) = header.get_mut(14..16) {
        length.copy_from_slice(&len16.to_be_bytes());
    }
    if crc32c {
        let at = header.len() - 4;
        let sum = crc32c_zeroed(&header, at);
        if let Some(value) = header.get_mut(at..) {
            value.copy_from_slice(&sum.to_be_bytes());
        }
    }
    buf.put_slice(&header);
    Ok(())
}

/// The two addresses' IPs in one family: as they are if they share one, else both IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (IpAddr, IpAddr) {
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => (src.into(), dst.into()),
        (src, dst) => (v6(src).into(), v6(dst).into()),
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
