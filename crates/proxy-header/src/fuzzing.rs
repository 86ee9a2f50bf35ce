//! The invariants a fuzz target checks on arbitrary bytes (`fuzz/` calls [`check`]).
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a broken invariant must stop the fuzzer: that is this module's purpose"
)]

use crate::{Decoded, MAX_V1_LEN, MAX_V2_LEN, Version, Versions, decode, encode};

/// Decodes `data` under every [`Versions`] and panics if an invariant breaks: decoding never
/// panics; `NeedMore(n)` has `n > 0` and never asks beyond the longest header of the version
/// the bytes begin (107 bytes for version 1); `Done` uses at
/// most `data.len()` bytes of an accepted version, decodes the same from exactly those bytes,
/// and re-encoding the header decodes to the same header.
pub fn check(data: &[u8]) {
    for accept in [Versions::V1, Versions::V2, Versions::Any] {
        match decode(data, accept) {
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > 0, "NeedMore(0)");
                // A version 1 header begins with `P`, a version 2 header with CR.
                let longest = match data.first() {
                    Some(b'P') => MAX_V1_LEN,
                    Some(_) => MAX_V2_LEN,
                    None => MAX_V2_LEN.max(MAX_V1_LEN),
                };
                assert!(
                    data.len() + n <= longest,
                    "NeedMore({n}) after {} bytes asks beyond the longest header",
                    data.len()
                );
            }
            Ok(Decoded::Done(header, used)) => {
                assert!(
                    used > 0 && used <= data.len(),
                    "used {used} of {}",
                    data.len()
                );
                assert!(
                    accept.accepts(header.version),
                    "{header:?} under {accept:?}"
                );
                let max = match header.version {
                    Version::V1 => MAX_V1_LEN,
                    Version::V2 => MAX_V2_LEN,
                };
                assert!(used <= max, "a {:?} header of {used} bytes", header.version);
                assert_eq!(
                    decode(&data[..used], accept),
                    Ok(Decoded::Done(header, used)),
                    "the header alone decodes differently"
                );
                let mut again = Vec::new();
                encode(&header, &mut again);
                assert_eq!(
                    decode(&again, accept),
                    Ok(Decoded::Done(header, again.len())),
                    "re-encoded as {again:?}"
                );
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_holds_on_sample_inputs() {
        let inputs: &[&[u8]] = &[
            b"",
            b"P",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nrest",
            b"PROXY TCP6 ::1 ::ffff:1.2.3.4 65535 0\r\n",
            b"PROXY UNKNOWN whatever\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x02\x00\x50\x01\xbb",
            b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x31\x00\x00",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x03\x04\x00\x00",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x07\x03\x00\x04\x00\x00\x00\x00",
            b"\x05\x01\x00",
            // A CR as byte 107: no room for the LF (this once asked for more forever).
            &[&b"PROXY UNKNOWN "[..], &[b'x'; 92], b"\r\n"].concat(),
        ];
        for input in inputs {
            check(input);
        }
    }
}
