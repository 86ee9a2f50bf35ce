//! The one-byte codes: METHOD (RFC 1928 §3), CMD (§4) and REP (§6).

use super::consts;
use crate::Error;

/// An authentication method number, RFC 1928 §3.
///
/// Every byte is a method number (IANA assigns 0x03–0x7F, 0x80–0xFE are private), so this
/// converts from `u8` without failing and keeps unknown numbers in [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// X'00' NO AUTHENTICATION REQUIRED.
    NoAuth,
    /// X'01' GSSAPI (not implemented by this crate).
    Gssapi,
    /// X'02' USERNAME/PASSWORD, RFC 1929.
    UsernamePassword,
    /// X'FF' NO ACCEPTABLE METHODS (only in a method selection).
    NoAcceptable,
    /// Any other number.
    Other(u8),
}

impl From<u8> for Method {
    fn from(byte: u8) -> Self {
        match byte {
            consts::METHOD_NO_AUTH => Method::NoAuth,
            consts::METHOD_GSSAPI => Method::Gssapi,
            consts::METHOD_USERNAME_PASSWORD => Method::UsernamePassword,
            consts::METHOD_NO_ACCEPTABLE => Method::NoAcceptable,
            other => Method::Other(other),
        }
    }
}

impl From<Method> for u8 {
    fn from(method: Method) -> Self {
        match method {
            Method::NoAuth => consts::METHOD_NO_AUTH,
            Method::Gssapi => consts::METHOD_GSSAPI,
            Method::UsernamePassword => consts::METHOD_USERNAME_PASSWORD,
            Method::NoAcceptable => consts::METHOD_NO_ACCEPTABLE,
            Method::Other(byte) => byte,
        }
    }
}

/// The CMD of a request, RFC 1928 §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// X'01' CONNECT: open a TCP connection to the destination (§4, §6).
    Connect,
    /// X'02' BIND: accept one TCP connection from the destination (§6).
    Bind,
    /// X'03' UDP ASSOCIATE: relay UDP datagrams (§7).
    UdpAssociate,
}

impl TryFrom<u8> for Command {
    type Error = Error;

    /// # Errors
    ///
    /// [`Error::Command`] with the byte if RFC 1928 assigns it no command.
    fn try_from(byte: u8) -> Result<Self, Error> {
        match byte {
            consts::CMD_CONNECT => Ok(Command::Connect),
            consts::CMD_BIND => Ok(Command::Bind),
            consts::CMD_UDP_ASSOCIATE => Ok(Command::UdpAssociate),
            other => Err(Error::Command(other)),
        }
    }
}

impl From<Command> for u8 {
    fn from(command: Command) -> Self {
        match command {
            Command::Connect => consts::CMD_CONNECT,
            Command::Bind => consts::CMD_BIND,
            Command::UdpAssociate => consts::CMD_UDP_ASSOCIATE,
        }
    }
}

/// The REP field of a reply, RFC 1928 §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// X'00' succeeded.
    Succeeded,
    /// X'01' general SOCKS server failure.
    GeneralFailure,
    /// X'02' connection not allowed by ruleset.
    NotAllowed,
    /// X'03' Network unreachable.
    NetworkUnreachable,
    /// X'04' Host unreachable.
    HostUnreachable,
    /// X'05' Connection refused.
    ConnectionRefused,
    /// X'06' TTL expired.
    TtlExpired,
    /// X'07' Command not supported.
    CommandNotSupported,
    /// X'08' Address type not supported.
    AddressTypeNotSupported,
}

impl TryFrom<u8> for Reply {
    type Error = Error;

    /// # Errors
    ///
    /// [`Error::UnknownReply`] with the byte for X'09' to X'FF', which RFC 1928 leaves
    /// unassigned.
    fn try_from(byte: u8) -> Result<Self, Error> {
        Ok(match byte {
            consts::REP_SUCCEEDED => Reply::Succeeded,
            consts::REP_GENERAL_FAILURE => Reply::GeneralFailure,
            consts::REP_NOT_ALLOWED => Reply::NotAllowed,
            consts::REP_NETWORK_UNREACHABLE => Reply::NetworkUnreachable,
            consts::REP_HOST_UNREACHABLE => Reply::HostUnreachable,
            consts::REP_CONNECTION_REFUSED => Reply::ConnectionRefused,
            consts::REP_TTL_EXPIRED => Reply::TtlExpired,
            consts::REP_COMMAND_NOT_SUPPORTED => Reply::CommandNotSupported,
            consts::REP_ADDRESS_TYPE_NOT_SUPPORTED => Reply::AddressTypeNotSupported,
            other => return Err(Error::UnknownReply(other)),
        })
    }
}

impl From<Reply> for u8 {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Succeeded => consts::REP_SUCCEEDED,
            Reply::GeneralFailure => consts::REP_GENERAL_FAILURE,
            Reply::NotAllowed => consts::REP_NOT_ALLOWED,
            Reply::NetworkUnreachable => consts::REP_NETWORK_UNREACHABLE,
            Reply::HostUnreachable => consts::REP_HOST_UNREACHABLE,
            Reply::ConnectionRefused => consts::REP_CONNECTION_REFUSED,
            Reply::TtlExpired => consts::REP_TTL_EXPIRED,
            Reply::CommandNotSupported => consts::REP_COMMAND_NOT_SUPPORTED,
            Reply::AddressTypeNotSupported => consts::REP_ADDRESS_TYPE_NOT_SUPPORTED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_converts_to_a_method_and_back() {
        for byte in 0..=u8::MAX {
            assert_eq!(u8::from(Method::from(byte)), byte);
        }
        assert_eq!(Method::from(0x00), Method::NoAuth);
        assert_eq!(Method::from(0x02), Method::UsernamePassword);
        assert_eq!(Method::from(0xFF), Method::NoAcceptable);
        assert_eq!(Method::from(0x80), Method::Other(0x80));
    }

    #[test]
    fn commands_round_trip_and_unknown_bytes_are_kept() {
        let table = [
            (0x01, Command::Connect),
            (0x02, Command::Bind),
            (0x03, Command::UdpAssociate),
        ];
        for (byte, command) in table {
            assert_eq!(Command::try_from(byte).ok(), Some(command));
            assert_eq!(u8::from(command), byte);
        }
        for byte in [0x00, 0x04, 0x7F, 0xFF] {
            assert!(matches!(Command::try_from(byte), Err(Error::Command(b)) if b == byte));
        }
    }

    #[test]
    fn replies_round_trip_and_unassigned_bytes_are_kept() {
        for byte in 0x00..=0x08 {
            let reply = Reply::try_from(byte).expect("assigned");
            assert_eq!(u8::from(reply), byte);
        }
        for byte in [0x09, 0x80, 0xFF] {
            assert!(matches!(Reply::try_from(byte), Err(Error::UnknownReply(b)) if b == byte));
        }
    }
}
