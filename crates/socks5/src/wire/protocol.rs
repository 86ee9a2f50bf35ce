//! Which proxy protocol a connection speaks, from its first bytes: for a listener that serves
//! SOCKS5, SOCKS4/4a and HTTP on one port.
//!
//! A SOCKS client speaks first, and its first byte is its version: 5 for SOCKS5 (RFC 1928 §3,
//! the greeting), 4 for SOCKS4 and SOCKS4a (the request). An HTTP proxy client's first bytes
//! are a request line, `METHOD SP request-target SP HTTP-version` (RFC 9112 §3); this module
//! recognises the methods of RFC 9110 §9 and PATCH (RFC 5789), each followed by its space, so
//! at most [`MAX_DETECT_LEN`] bytes decide. Bytes that can begin none of these are
//! [`Protocol::Unknown`] at once: a caller should close such a connection, not wait for more.
//!
//! [`detect`] only looks: the bytes stay where they are, for the protocol's own decoder.

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// First byte 0x05.
    Socks5,
    /// First byte 0x04: SOCKS4 or SOCKS4a (the request tells which).
    Socks4,
    /// An HTTP/1.x request line starting with a known method and a space.
    Http,
    /// Anything else (a TLS ClientHello, an SSH banner, HTTP/2's preface, binary data...).
    Unknown,
}

/// What [`detect`] made of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// Undecided: at least this many more bytes are needed (at least 1, at most
    /// [`MAX_DETECT_LEN`] minus the bytes given, and never more than the shortest method
    /// and space the bytes can still begin).
    NeedMore(usize),
    /// Decided; no byte was consumed.
    Protocol(Protocol),
}

/// The most bytes [`detect`] ever needs: `"CONNECT "` and `"OPTIONS "`.
pub const MAX_DETECT_LEN: usize = 8;

/// The HTTP methods recognised, each with the space that ends it in a request line.
const HTTP_METHODS: [&[u8]; 9] = [
    b"CONNECT ",
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
];

/// Decides which protocol `first_bytes` (the first bytes a client sent, possibly fewer than it
/// will send) begin. Pure: it never panics and never consumes.
///
/// ```
/// use socks5::wire::protocol::{Detected, Protocol, detect};
///
/// assert_eq!(detect(&[5, 1, 0]), Detected::Protocol(Protocol::Socks5));
/// assert_eq!(detect(b"CONN"), Detected::NeedMore(4));
/// assert_eq!(detect(b"CONNECT example.test:443 HTTP/1.1\r\n"), Detected::Protocol(Protocol::Http));
/// assert_eq!(detect(b"\x16\x03\x01"), Detected::Protocol(Protocol::Unknown));
/// ```
#[must_use]
pub fn detect(first_bytes: &[u8]) -> Detected {
    match first_bytes.first() {
        None => return Detected::NeedMore(1),
        Some(0x05) => return Detected::Protocol(Protocol::Socks5),
        Some(0x04) => return Detected::Protocol(Protocol::Socks4),
        Some(_) => {}
    }
    let mut shortest_missing = None::<usize>;
    for method in HTTP_METHODS {
        if first_bytes.starts_with(method) {
            return Detected::Protocol(Protocol::Http);
        }
        if method.starts_with(first_bytes) {
            let missing = method.len() - first_bytes.len();
            shortest_missing = Some(shortest_missing.map_or(missing, |m| m.min(missing)));
        }
    }
    match shortest_missing {
        Some(missing) => Detected::NeedMore(missing),
        None => Detected::Protocol(Protocol::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_byte_decides_socks() {
        assert_eq!(detect(&[5]), Detected::Protocol(Protocol::Socks5));
        assert_eq!(detect(&[5, 2, 0, 2]), Detected::Protocol(Protocol::Socks5));
        assert_eq!(detect(&[4]), Detected::Protocol(Protocol::Socks4));
        assert_eq!(
            detect(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00a\x00"),
            Detected::Protocol(Protocol::Socks4)
        );
    }

    #[test]
    fn every_method_with_its_space_is_http() {
        for method in HTTP_METHODS {
            assert_eq!(
                detect(method),
                Detected::Protocol(Protocol::Http),
                "{method:?}"
            );
            let mut line = method.to_vec();
            line.extend_from_slice(b"http://a.test/ HTTP/1.1\r\n");
            assert_eq!(detect(&line), Detected::Protocol(Protocol::Http));
            // Every strict prefix waits, for no more than the rest of the method.
            for cut in 0..method.len() {
                match detect(&method[..cut]) {
                    Detected::NeedMore(n) => {
                        assert!(
                            n >= 1 && n <= method.len() - cut,
                            "{method:?} cut {cut}: {n}"
                        );
                    }
                    other => panic!("{method:?} cut {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn asks_for_the_shortest_method_it_could_still_be() {
        assert_eq!(detect(b""), Detected::NeedMore(1));
        // "G" can only be GET.
        assert_eq!(detect(b"G"), Detected::NeedMore(3));
        // "P" may be PUT (3 more), POST, PATCH.
        assert_eq!(detect(b"P"), Detected::NeedMore(3));
        assert_eq!(detect(b"PO"), Detected::NeedMore(3));
        assert_eq!(detect(b"PA"), Detected::NeedMore(4));
        assert_eq!(detect(b"CONNECT"), Detected::NeedMore(1));
        assert_eq!(detect(b"OPTIONS"), Detected::NeedMore(1));
    }

    #[test]
    fn anything_else_is_unknown_at_once() {
        let table: [&[u8]; 12] = [
            b"\x16\x03\x01\x02\x00",    // TLS ClientHello
            b"SSH-2.0-OpenSSH_9.6\r\n", // SSH banner
            b"PRI * HTTP/2.0\r\n",      // HTTP/2 preface
            b"get / HTTP/1.1\r\n",      // methods are case-sensitive (RFC 9110 §9.1)
            b"GETX / HTTP/1.1\r\n",     // no space after the method
            b"GET\t/ HTTP/1.1\r\n",     // not SP
            b"CONNECTX",                // a longer token
            b"BREW / HTCPCP/1.0\r\n",   // unknown method
            b"\x00",                    // binary
            b"\x03",                    // SOCKS version 3 does not exist
            b"\r\nGET / HTTP/1.1\r\n",  // a leading empty line is not taken as HTTP
            b" GET",                    // leading space
        ];
        for bytes in table {
            assert_eq!(
                detect(bytes),
                Detected::Protocol(Protocol::Unknown),
                "{bytes:?}"
            );
        }
    }

    proptest! {
        /// A prefix never decides differently from more bytes: a NeedMore is followed by
        /// the same answer for any continuation or by another NeedMore, and never asks past
        /// MAX_DETECT_LEN.
        #[test]
        fn more_bytes_never_change_a_decision(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let whole = detect(&bytes);
            for cut in 0..=bytes.len() {
                match detect(&bytes[..cut]) {
                    Detected::NeedMore(n) => {
                        prop_assert!(n >= 1 && cut + n <= MAX_DETECT_LEN);
                    }
                    decided => prop_assert_eq!(decided, whole),
                }
            }
            if bytes.len() >= MAX_DETECT_LEN {
                prop_assert!(matches!(whole, Detected::Protocol(_)));
            }
        }
    }
}
