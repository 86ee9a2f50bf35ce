//! The messages of RFC 1928 (SOCKS5) and RFC 1929 (username/password), as plain values with
//! pure decoders and encoders.
//!
//! Every decoder has the shape `decode_*(&[u8]) -> Result<Decoded<T>, Error>`: it borrows the
//! bytes received so far and never consumes them. It answers [`Decoded::NeedMore`] with the
//! number of bytes it needs before it can decide anything more (never more than the rest of a
//! valid message, so a client may read exactly that many bytes without eating into what follows),
//! [`Decoded::Done`] with the message and the bytes it used, or `Err` as soon as a byte is seen
//! that can never start a valid message (a wrong version, an unknown command or address type).
//! No input makes a decoder panic.
//!
//! Every encoder has the shape `encode_*(&T, &mut impl BufMut)`. Encoders whose message holds a
//! variable-length field return `Result`, because a value built in memory may not fit its one-byte
//! length on the wire; they check before writing anything.

mod address;
mod codes;
mod command;
mod negotiation;
pub mod protocol;
pub mod socks4;

pub use address::{Address, decode_address, encode_address};
pub use codes::{Command, Method, Reply};
pub use command::{
    Request, Response, UdpHeader, decode_request, decode_response, decode_udp_header,
    encode_request, encode_response, encode_udp_header,
};
pub use negotiation::{
    Greeting, MethodSelection, PasswordRequest, PasswordStatus, decode_greeting,
    decode_method_selection, decode_password_request, decode_password_status, encode_greeting,
    encode_method_selection, encode_password_request, encode_password_status,
};

/// What a decoder made of the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The message is incomplete: at least this many more bytes are needed (always at least 1,
    /// and never more than the rest of the message).
    NeedMore(usize),
    /// A whole message, and how many bytes of the input it used (`<= input.len()`).
    Done(T, usize),
}

/// The raw numbers of the two RFCs. Only the wire modules use them; everything else speaks in
/// the enums of [`codes`].
mod consts {
    /// RFC 1928 §3, §4, §6: VER of every SOCKS5 message.
    pub(super) const SOCKS_VERSION: u8 = 0x05;
    /// RFC 1929 §2: VER of the username/password sub-negotiation.
    pub(super) const PASSWORD_VERSION: u8 = 0x01;

    /// RFC 1928 §3: METHOD 'NO AUTHENTICATION REQUIRED'.
    pub(super) const METHOD_NO_AUTH: u8 = 0x00;
    /// RFC 1928 §3: METHOD 'GSSAPI'.
    pub(super) const METHOD_GSSAPI: u8 = 0x01;
    /// RFC 1928 §3: METHOD 'USERNAME/PASSWORD' (RFC 1929).
    pub(super) const METHOD_USERNAME_PASSWORD: u8 = 0x02;
    /// RFC 1928 §3: METHOD 'NO ACCEPTABLE METHODS'.
    pub(super) const METHOD_NO_ACCEPTABLE: u8 = 0xFF;

    /// RFC 1928 §4: CMD 'CONNECT'.
    pub(super) const CMD_CONNECT: u8 = 0x01;
    /// RFC 1928 §4: CMD 'BIND'.
    pub(super) const CMD_BIND: u8 = 0x02;
    /// RFC 1928 §4: CMD 'UDP ASSOCIATE'.
    pub(super) const CMD_UDP_ASSOCIATE: u8 = 0x03;

    /// RFC 1928 §4, §5: ATYP 'IP V4 address' (4 octets follow).
    pub(super) const ATYP_IPV4: u8 = 0x01;
    /// RFC 1928 §4, §5: ATYP 'DOMAINNAME' (a length octet and the name follow).
    pub(super) const ATYP_DOMAIN: u8 = 0x03;
    /// RFC 1928 §4, §5: ATYP 'IP V6 address' (16 octets follow).
    pub(super) const ATYP_IPV6: u8 = 0x04;

    /// RFC 1928 §6: REP 'succeeded'.
    pub(super) const REP_SUCCEEDED: u8 = 0x00;
    /// RFC 1928 §6: REP 'general SOCKS server failure'.
    pub(super) const REP_GENERAL_FAILURE: u8 = 0x01;
    /// RFC 1928 §6: REP 'connection not allowed by ruleset'.
    pub(super) const REP_NOT_ALLOWED: u8 = 0x02;
    /// RFC 1928 §6: REP 'Network unreachable'.
    pub(super) const REP_NETWORK_UNREACHABLE: u8 = 0x03;
    /// RFC 1928 §6: REP 'Host unreachable'.
    pub(super) const REP_HOST_UNREACHABLE: u8 = 0x04;
    /// RFC 1928 §6: REP 'Connection refused'.
    pub(super) const REP_CONNECTION_REFUSED: u8 = 0x05;
    /// RFC 1928 §6: REP 'TTL expired'.
    pub(super) const REP_TTL_EXPIRED: u8 = 0x06;
    /// RFC 1928 §6: REP 'Command not supported'.
    pub(super) const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07;
    /// RFC 1928 §6: REP 'Address type not supported'.
    pub(super) const REP_ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

    /// RFC 1929 §2: STATUS 'success'; any other value is a failure.
    pub(super) const PASSWORD_SUCCESS: u8 = 0x00;
    /// The failure STATUS this crate sends (RFC 1929 §2 only says "other than X'00'").
    pub(super) const PASSWORD_FAILURE: u8 = 0x01;

    /// RFC 1928 §4: the RSV octet of a request and §6 of a reply.
    pub(super) const RESERVED: u8 = 0x00;
    /// RFC 1928 §7: FRAG 'standalone datagram'.
    pub(super) const FRAG_STANDALONE: u8 = 0x00;
}

#[cfg(test)]
mod testing {
    //! Checks shared by the wire modules' property tests.
    use std::fmt;

    use proptest::prelude::*;

    use super::Decoded;
    use crate::Error;

    /// Whatever the outcome, `Done` used at most the input and `NeedMore` asks for something.
    pub(super) fn check_no_panic<T>(
        bytes: &[u8],
        decoded: Result<Decoded<T>, Error>,
    ) -> Result<(), TestCaseError> {
        match decoded {
            Ok(Decoded::Done(_, used)) => prop_assert!(used <= bytes.len()),
            Ok(Decoded::NeedMore(n)) => prop_assert!(n >= 1),
            Err(_) => {}
        }
        Ok(())
    }

    /// Every strict prefix of `encoded` asks for at least one and at most the missing bytes,
    /// and the whole followed by extra bytes decodes like the whole.
    pub(super) fn check_prefixes<T: fmt::Debug + PartialEq>(
        encoded: &[u8],
        decode: impl Fn(&[u8]) -> Result<Decoded<T>, Error>,
    ) -> Result<(), TestCaseError> {
        for cut in 0..encoded.len() {
            match decode(&encoded[..cut]) {
                Ok(Decoded::NeedMore(n)) => prop_assert!(n >= 1 && n <= encoded.len() - cut),
                other => prop_assert!(false, "prefix of {} gave {:?}", cut, other),
            }
        }
        let mut longer = encoded.to_vec();
        longer.extend_from_slice(b"\x05\x00trailing");
        let whole = decode(encoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let with_tail = decode(&longer).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(whole, with_tail);
        Ok(())
    }
}
