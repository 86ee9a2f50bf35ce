//! Properties of the decoder: encode then decode gives the input back, any split decodes like
//! the whole, arbitrary bytes never panic and never use more than they were given.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use proxy_header::{
    Decoded, Endpoints, Header, Tlv, Version, Versions, decode, encode, encode_v2, fuzzing,
};

fn socket_addr(v6: bool) -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(move |(bytes, port)| {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        };
        SocketAddr::new(ip, port)
    })
}

fn endpoints() -> impl Strategy<Value = Endpoints> {
    prop_oneof![
        Just(Endpoints::Local),
        Just(Endpoints::Unknown),
        any::<bool>().prop_flat_map(|v6| (socket_addr(v6), socket_addr(v6)).prop_map(
            |(source, destination)| Endpoints::Tcp {
                source,
                destination
            }
        )),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (any::<bool>(), endpoints()).prop_map(|(v2, endpoints)| {
        if v2 {
            Header {
                version: Version::V2,
                endpoints,
            }
        } else {
            // Version 1 has no LOCAL: it is written as UNKNOWN.
            let endpoints = match endpoints {
                Endpoints::Local => Endpoints::Unknown,
                other => other,
            };
            Header {
                version: Version::V1,
                endpoints,
            }
        }
    })
}

proptest! {
    #[test]
    fn encode_then_decode_gives_the_header_back(header in header(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut buf = Vec::new();
        encode(&header, &mut buf);
        let len = buf.len();
        buf.extend_from_slice(&tail);
        prop_assert_eq!(decode(&buf, Versions::Any), Ok(Decoded::Done(header, len)));
        fuzzing::check(&buf);
    }

    #[test]
    fn every_prefix_needs_more(header in header()) {
        let mut buf = Vec::new();
        encode(&header, &mut buf);
        for cut in 0..buf.len() {
            match decode(&buf[..cut], Versions::Any) {
                Ok(Decoded::NeedMore(n)) => prop_assert!(n >= 1 && cut + n <= buf.len(), "cut {} asks {}", cut, n),
                other => prop_assert!(false, "cut {}: {:?}", cut, other),
            }
        }
    }

    #[test]
    fn v2_with_tlvs_and_crc_round_trips(
        endpoints in endpoints(),
        tlvs in proptest::collection::vec((any::<u8>().prop_filter("not CRC", |k| *k != 3), proptest::collection::vec(any::<u8>(), 0..40)), 0..4),
        crc in any::<bool>(),
    ) {
        let tlvs: Vec<Tlv<'_>> = tlvs.iter().map(|(kind, value)| Tlv { kind: *kind, value }).collect();
        let mut buf = Vec::new();
        encode_v2(&endpoints, &tlvs, crc, &mut buf).unwrap();
        prop_assert_eq!(
            decode(&buf, Versions::V2),
            Ok(Decoded::Done(Header { version: Version::V2, endpoints }, buf.len()))
        );
        fuzzing::check(&buf);
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::check(&buf);
    }

    #[test]
    fn arbitrary_bytes_after_a_signature_never_panic(v2 in any::<bool>(), rest in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = if v2 { b"\r\n\r\n\0\r\nQUIT\n".to_vec() } else { b"PROXY ".to_vec() };
        buf.extend_from_slice(&rest);
        fuzzing::check(&buf);
    }
}
