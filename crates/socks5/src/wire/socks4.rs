//! SOCKS4 and SOCKS4a requests and replies, as plain values with pure decoders and encoders.
//!
//! SOCKS4 has no RFC. The references are Ying-Da Lee's two texts, "SOCKS: A protocol for
//! TCP proxy across firewalls" (SOCKS 4, the request and reply layouts below) and "SOCKS 4A:
//! A Simple Extension to SOCKS 4 Protocol" (a host name after the user id when DSTIP is
//! `0.0.0.x`, x ≠ 0). Neither text bounds the user id or the host name; this module accepts
//! at most [`MAX_USER_ID_LEN`] and [`MAX_HOST_LEN`] bytes (the longest SOCKS5 name too), so a
//! decoder never asks for more than 8 + 256 + 256 bytes and a reader never buffers without
//! bound while it looks for a NUL.
//!
//! The decoders follow the contract of the other wire modules (see [`super`]): they borrow the
//! bytes received so far and answer [`Decoded::NeedMore`] (at least 1, never more than the rest
//! of the shortest message the bytes can still begin), [`Decoded::Done`] with the bytes used,
//! or an error as soon as a byte is seen that can never be part of a valid message.
//!
//! SOCKS4 carries no password: the user id is only a name the client claims (servers once
//! checked it against identd, which no one runs now). It must never stand in for a login.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::BufMut;

use super::{Address, Decoded};

/// The longest user id accepted, in bytes (without its NUL).
pub const MAX_USER_ID_LEN: usize = 255;
/// The longest SOCKS4a host name accepted, in bytes (without its NUL).
pub const MAX_HOST_LEN: usize = 255;
/// The length of a reply, and of a request's fixed part (VN, CD, DSTPORT, DSTIP).
pub const REPLY_LEN: usize = 8;

/// The raw numbers of the SOCKS4 and SOCKS4a texts.
mod consts {
    /// SOCKS4 "Request": VN of a request.
    pub(super) const VERSION: u8 = 4;
    /// SOCKS4 "Request": VN of a reply ("the version of the reply code and should be 0").
    pub(super) const REPLY_VERSION: u8 = 0;
    /// SOCKS4 "CONNECT": CD 1.
    pub(super) const CMD_CONNECT: u8 = 1;
    /// SOCKS4 "BIND": CD 2.
    pub(super) const CMD_BIND: u8 = 2;
    /// SOCKS4 reply CD 90: request granted.
    pub(super) const REP_GRANTED: u8 = 90;
    /// SOCKS4 reply CD 91: request rejected or failed.
    pub(super) const REP_REJECTED: u8 = 91;
    /// SOCKS4 reply CD 92: rejected because the server cannot connect to identd on the client.
    pub(super) const REP_IDENTD_UNREACHABLE: u8 = 92;
    /// SOCKS4 reply CD 93: rejected because identd and the client reported different user ids.
    pub(super) const REP_IDENTD_MISMATCH: u8 = 93;
    /// The fields a request ends with.
    pub(super) const NUL: u8 = 0;
}

/// What can be wrong with SOCKS4 bytes, or with a value to encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Socks4Error {
    /// The first byte of a request was not 4.
    #[error("peer spoke SOCKS version {0:#04x}, not 4")]
    Version(u8),
    /// A CD other than 1 (CONNECT) or 2 (BIND).
    #[error("unknown SOCKS4 command {0:#04x}")]
    Command(u8),
    /// More than [`MAX_USER_ID_LEN`] bytes without the NUL that ends the user id.
    #[error("user id longer than {MAX_USER_ID_LEN} bytes")]
    UserIdTooLong,
    /// More than [`MAX_HOST_LEN`] bytes without the NUL that ends the SOCKS4a host name.
    #[error("SOCKS4a host name longer than {MAX_HOST_LEN} bytes")]
    HostTooLong,
    /// A SOCKS4a request whose host name is empty.
    #[error("empty SOCKS4a host name")]
    EmptyHost,
    /// The first byte of a reply was not 0.
    #[error("SOCKS4 reply version {0:#04x}, expected 0x00")]
    ReplyVersion(u8),
    /// A reply CD other than 90 to 93.
    #[error("unknown SOCKS4 reply code {0:#04x}")]
    UnknownReply(u8),
    /// Encoding: a field that would not survive its NUL terminator or the length bound.
    #[error("{field} cannot be sent: {reason}")]
    Unencodable {
        /// `"user id"` or `"host name"`.
        field: &'static str,
        /// `"it contains a NUL byte"`, `"it is empty"` or `"it is longer than 255 bytes"`.
        reason: &'static str,
    },
    /// Encoding: SOCKS4 carries only IPv4 addresses (a name goes as SOCKS4a).
    #[error("SOCKS4 cannot carry the IPv6 address {0}")]
    Ipv6(SocketAddr),
    /// Encoding: an IPv4 address `0.0.0.x` with x ≠ 0 means "a SOCKS4a name follows".
    #[error("{0} cannot be sent as SOCKS4: 0.0.0.1 to 0.0.0.255 mark a SOCKS4a request")]
    Socks4aMarker(SocketAddrV4),
}

/// CD of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// CD 1: open a TCP connection to the destination.
    Connect,
    /// CD 2: accept one TCP connection from the destination.
    Bind,
}

impl TryFrom<u8> for Command {
    type Error = Socks4Error;

    fn try_from(byte: u8) -> Result<Self, Socks4Error> {
        match byte {
            consts::CMD_CONNECT => Ok(Command::Connect),
            consts::CMD_BIND => Ok(Command::Bind),
            other => Err(Socks4Error::Command(other)),
        }
    }
}

impl From<Command> for u8 {
    fn from(command: Command) -> Self {
        match command {
            Command::Connect => consts::CMD_CONNECT,
            Command::Bind => consts::CMD_BIND,
        }
    }
}

impl From<Command> for super::Command {
    fn from(command: Command) -> Self {
        match command {
            Command::Connect => super::Command::Connect,
            Command::Bind => super::Command::Bind,
        }
    }
}

/// A SOCKS4 or SOCKS4a request.
///
/// ```text
/// +----+----+----+----+----+----+----+----+----+----+....+----+
/// | VN | CD | DSTPORT |      DSTIP        | USERID       |NULL|      VN = 4, CD = 1 or 2
/// +----+----+----+----+----+----+----+----+----+----+....+----+
///    1    1      2              4           variable       1
///
/// SOCKS4a: DSTIP = 0.0.0.x (x ≠ 0), and after the user id's NULL:
/// +----+....+----+----+
/// | HOSTNAME     |NULL|
/// +----+....+----+----+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// CD.
    pub command: Command,
    /// DSTIP and DSTPORT ([`Address::Ip`], always IPv4), or for SOCKS4a the host name and
    /// DSTPORT ([`Address::Domain`], the name decoded as UTF-8 with bad bytes replaced by
    /// U+FFFD, like a SOCKS5 name).
    pub destination: Address,
    /// USERID, as sent (at most [`MAX_USER_ID_LEN`] bytes, no NUL). A claim, not a login.
    pub user_id: Vec<u8>,
}

impl Request {
    /// Whether this request is SOCKS4a (it names a host rather than an IPv4 address).
    #[must_use]
    pub fn is_socks4a(&self) -> bool {
        matches!(self.destination, Address::Domain(..))
    }
}

/// CD of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// 90: request granted.
    Granted,
    /// 91: request rejected or failed (the answer to every failure of this crate).
    Rejected,
    /// 92: rejected because the server cannot connect to identd on the client.
    IdentdUnreachable,
    /// 93: rejected because identd and the client reported different user ids.
    IdentdMismatch,
}

impl TryFrom<u8> for ReplyCode {
    type Error = Socks4Error;

    fn try_from(byte: u8) -> Result<Self, Socks4Error> {
        match byte {
            consts::REP_GRANTED => Ok(ReplyCode::Granted),
            consts::REP_REJECTED => Ok(ReplyCode::Rejected),
            consts::REP_IDENTD_UNREACHABLE => Ok(ReplyCode::IdentdUnreachable),
            consts::REP_IDENTD_MISMATCH => Ok(ReplyCode::IdentdMismatch),
            other => Err(Socks4Error::UnknownReply(other)),
        }
    }
}

impl From<ReplyCode> for u8 {
    fn from(code: ReplyCode) -> Self {
        match code {
            ReplyCode::Granted => consts::REP_GRANTED,
            ReplyCode::Rejected => consts::REP_REJECTED,
            ReplyCode::IdentdUnreachable => consts::REP_IDENTD_UNREACHABLE,
            ReplyCode::IdentdMismatch => consts::REP_IDENTD_MISMATCH,
        }
    }
}

/// The server's reply (sent twice for BIND, like SOCKS5's).
///
/// ```text
/// +----+----+----+----+----+----+----+----+
/// | VN | CD | DSTPORT |      DSTIP        |      VN = 0, CD = 90, 91, 92 or 93
/// +----+----+----+----+----+----+----+----+
///    1    1      2              4
/// ```
///
/// A CONNECT client ignores DSTPORT and DSTIP; a BIND reply carries the listening address
/// (first reply) and the connecting peer (second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// CD.
    pub code: ReplyCode,
    /// DSTIP and DSTPORT.
    pub address: SocketAddrV4,
}

impl Reply {
    /// A reply with `code` and the address `0.0.0.0:0`.
    #[must_use]
    pub fn new(code: ReplyCode) -> Self {
        Reply {
            code,
            address: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        }
    }
}

/// Decodes a SOCKS4 or SOCKS4a [`Request`].
///
/// # Errors
///
/// [`Socks4Error::Version`] if the first byte is not 4, [`Socks4Error::Command`] for a CD other
/// than 1 or 2, [`Socks4Error::UserIdTooLong`] and [`Socks4Error::HostTooLong`] once 256 bytes
/// of the field are there without a NUL, [`Socks4Error::EmptyHost`] for a SOCKS4a host name of
/// length zero; each as soon as its byte is there.
pub fn decode_request(buf: &[u8]) -> Result<Decoded<Request>, Socks4Error> {
    // The shortest request: the fixed part and the user id's NUL.
    const MIN_LEN: usize = REPLY_LEN + 1;
    if let Some(&version) = buf.first()
        && version != consts::VERSION
    {
        return Err(Socks4Error::Version(version));
    }
    if let Some(&command) = buf.get(1) {
        Command::try_from(command)?;
    }
    let Some(&[_, command, port_hi, port_lo, a, b, c, d]) = buf.first_chunk::<REPLY_LEN>() else {
        return Ok(need(MIN_LEN, buf.len()));
    };
    let command = Command::try_from(command)?;
    let port = u16::from_be_bytes([port_hi, port_lo]);
    // SOCKS4a: "0.0.0.x with x nonzero, an inadmissible destination address".
    let socks4a = [a, b, c] == [0, 0, 0] && d != 0;
    let rest = buf.get(REPLY_LEN..).unwrap_or_default();
    let user_id = match nul_terminated(rest, MAX_USER_ID_LEN) {
        Field::Done(user_id) => user_id,
        // The user id's NUL, and for SOCKS4a a one-byte name and its NUL.
        Field::Open => return Ok(Decoded::NeedMore(if socks4a { 3 } else { 1 })),
        Field::TooLong => return Err(Socks4Error::UserIdTooLong),
    };
    let after_user = REPLY_LEN + user_id.len() + 1;
    if !socks4a {
        let destination = Address::Ip(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port).into());
        let request = Request {
            command,
            destination,
            user_id: user_id.to_vec(),
        };
        return Ok(Decoded::Done(request, after_user));
    }
    let rest = buf.get(after_user..).unwrap_or_default();
    let host = match nul_terminated(rest, MAX_HOST_LEN) {
        Field::Done([]) => return Err(Socks4Error::EmptyHost),
        Field::Done(host) => host,
        Field::Open if rest.is_empty() => return Ok(Decoded::NeedMore(2)),
        Field::Open => return Ok(Decoded::NeedMore(1)),
        Field::TooLong => return Err(Socks4Error::HostTooLong),
    };
    let request = Request {
        command,
        destination: Address::Domain(String::from_utf8_lossy(host).into_owned(), port),
        user_id: user_id.to_vec(),
    };
    Ok(Decoded::Done(request, after_user + host.len() + 1))
}

/// Encodes a [`Request`]: an [`Address::Ip`] (IPv4) as SOCKS4, an [`Address::Domain`] as
/// SOCKS4a with DSTIP `0.0.0.1`.
///
/// # Errors
///
/// [`Socks4Error::Unencodable`] for a user id or host name with a NUL byte or longer than 255
/// bytes, or an empty host name; [`Socks4Error::Ipv6`] for an IPv6 destination;
/// [`Socks4Error::Socks4aMarker`] for an IPv4 destination in `0.0.0.1`–`0.0.0.255`. Nothing is
/// written then.
pub fn encode_request(request: &Request, out: &mut impl BufMut) -> Result<(), Socks4Error> {
    check_field("user id", &request.user_id, MAX_USER_ID_LEN, true)?;
    let (ip, port, host) = match &request.destination {
        Address::Ip(SocketAddr::V4(address)) => {
            let [a, b, c, d] = address.ip().octets();
            if [a, b, c] == [0, 0, 0] && d != 0 {
                return Err(Socks4Error::Socks4aMarker(*address));
            }
            (*address.ip(), address.port(), None)
        }
        Address::Ip(address @ SocketAddr::V6(_)) => return Err(Socks4Error::Ipv6(*address)),
        Address::Domain(name, port) => {
            check_field("host name", name.as_bytes(), MAX_HOST_LEN, false)?;
            (Ipv4Addr::new(0, 0, 0, 1), *port, Some(name.as_bytes()))
        }
    };
    out.put_u8(consts::VERSION);
    out.put_u8(request.command.into());
    out.put_u16(port);
    out.put_slice(&ip.octets());
    out.put_slice(&request.user_id);
    out.put_u8(consts::NUL);
    if let Some(host) = host {
        out.put_slice(host);
        out.put_u8(consts::NUL);
    }
    Ok(())
}

/// Decodes a [`Reply`] (what a client reads).
///
/// # Errors
///
/// [`Socks4Error::ReplyVersion`] if the first byte is not 0, [`Socks4Error::UnknownReply`] for
/// a CD other than 90 to 93; each as soon as its byte is there.
pub fn decode_reply(buf: &[u8]) -> Result<Decoded<Reply>, Socks4Error> {
    if let Some(&version) = buf.first()
        && version != consts::REPLY_VERSION
    {
        return Err(Socks4Error::ReplyVersion(version));
    }
    if let Some(&code) = buf.get(1) {
        ReplyCode::try_from(code)?;
    }
    let Some(&[_, code, port_hi, port_lo, a, b, c, d]) = buf.first_chunk::<REPLY_LEN>() else {
        return Ok(need(REPLY_LEN, buf.len()));
    };
    let reply = Reply {
        code: ReplyCode::try_from(code)?,
        address: SocketAddrV4::new(
            Ipv4Addr::new(a, b, c, d),
            u16::from_be_bytes([port_hi, port_lo]),
        ),
    };
    Ok(Decoded::Done(reply, REPLY_LEN))
}

/// Encodes a [`Reply`]: always [`REPLY_LEN`] bytes.
pub fn encode_reply(reply: &Reply, out: &mut impl BufMut) {
    out.put_u8(consts::REPLY_VERSION);
    out.put_u8(reply.code.into());
    out.put_u16(reply.address.port());
    out.put_slice(&reply.address.ip().octets());
}

/// A NUL-terminated field, as far as it has arrived.
enum Field<'a> {
    /// The bytes before the NUL.
    Done(&'a [u8]),
    /// No NUL yet, and no more than the bound so far.
    Open,
    /// More than the bound without a NUL.
    TooLong,
}

fn nul_terminated(rest: &[u8], max_len: usize) -> Field<'_> {
    let window = rest.get(..=max_len).unwrap_or(rest);
    match window.iter().position(|&b| b == consts::NUL) {
        Some(end) => Field::Done(window.get(..end).unwrap_or_default()),
        None if window.len() > max_len => Field::TooLong,
        None => Field::Open,
    }
}

fn need<T>(total: usize, have: usize) -> Decoded<T> {
    Decoded::NeedMore(total.saturating_sub(have).max(1))
}

fn check_field(
    field: &'static str,
    bytes: &[u8],
    max_len: usize,
    may_be_empty: bool,
) -> Result<(), Socks4Error> {
    let reason = if bytes.contains(&consts::NUL) {
        "it contains a NUL byte"
    } else if bytes.len() > max_len {
        "it is longer than 255 bytes"
    } else if bytes.is_empty() && !may_be_empty {
        "it is empty"
    } else {
        return Ok(());
    };
    Err(Socks4Error::Unencodable { field, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(text: &str) -> Address {
        Address::Ip(text.parse().expect("valid socket address"))
    }

    fn request(command: Command, destination: Address, user_id: &[u8]) -> Request {
        Request {
            command,
            destination,
            user_id: user_id.to_vec(),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Decoded<Request>, Socks4Error> {
        decode_request(bytes)
    }

    #[test]
    fn decodes_every_field_of_a_socks4_request() {
        let table: [(&[u8], Request, usize); 5] = [
            // CONNECT 10.0.0.1:80, empty user id.
            (
                &[4, 1, 0, 80, 10, 0, 0, 1, 0],
                request(Command::Connect, v4("10.0.0.1:80"), b""),
                9,
            ),
            // BIND, port 0x1234, user id "bob", bytes after the request left alone.
            (
                b"\x04\x02\x12\x34\xc0\x00\x02\x07bob\x00GET",
                request(Command::Bind, v4("192.0.2.7:4660"), b"bob"),
                12,
            ),
            // DSTIP 0.0.0.0 is plain SOCKS4 (the rules refuse it), not SOCKS4a.
            (
                &[4, 1, 0, 1, 0, 0, 0, 0, 0],
                request(Command::Connect, v4("0.0.0.0:1"), b""),
                9,
            ),
            // 1.0.0.1 and 0.0.1.0 are ordinary addresses too: only 0.0.0.x marks SOCKS4a.
            (
                &[4, 1, 0xff, 0xff, 0, 0, 1, 0, b'u', 0],
                request(Command::Connect, v4("0.0.1.0:65535"), b"u"),
                10,
            ),
            // The user id is bytes, not text.
            (
                &[4, 1, 0, 2, 1, 0, 0, 1, 0xff, 0xfe, 0],
                request(Command::Connect, v4("1.0.0.1:2"), &[0xff, 0xfe]),
                11,
            ),
        ];
        for (bytes, expected, used) in table {
            assert_eq!(
                decode(bytes).expect("valid"),
                Decoded::Done(expected, used),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn decodes_socks4a_requests() {
        let table: [(&[u8], Request, usize); 4] = [
            (
                b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.test\x00",
                request(
                    Command::Connect,
                    Address::Domain("example.test".into(), 443),
                    b"",
                ),
                22,
            ),
            // Any x ≠ 0 marks SOCKS4a; a user id comes first.
            (
                b"\x04\x01\x00\x50\x00\x00\x00\xffme\x00h\x00rest",
                request(Command::Connect, Address::Domain("h".into(), 80), b"me"),
                13,
            ),
            // A bad UTF-8 name is kept, lossily, for the resolver to fail on.
            (
                b"\x04\x02\x00\x50\x00\x00\x00\x07\x00a\xffb\x00",
                request(Command::Bind, Address::Domain("a\u{fffd}b".into(), 80), b""),
                13,
            ),
            // An IP literal stays a name here; the server turns it into an IP.
            (
                b"\x04\x01\x00\x50\x00\x00\x00\x01\x00127.0.0.1\x00",
                request(
                    Command::Connect,
                    Address::Domain("127.0.0.1".into(), 80),
                    b"",
                ),
                19,
            ),
        ];
        for (bytes, expected, used) in table {
            assert_eq!(
                decode(bytes).expect("valid"),
                Decoded::Done(expected, used),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn rejects_bad_bytes_as_soon_as_they_arrive() {
        assert_eq!(decode(&[5]), Err(Socks4Error::Version(5)));
        assert_eq!(decode(b"GET / HTTP/1.1"), Err(Socks4Error::Version(b'G')));
        assert_eq!(decode(&[4, 3]), Err(Socks4Error::Command(3)));
        assert_eq!(decode(&[4, 0]), Err(Socks4Error::Command(0)));
        assert_eq!(
            decode(&[4, 1, 0, 80, 0, 0, 0, 1, 0, 0]),
            Err(Socks4Error::EmptyHost)
        );
    }

    /// The bounds: 255 bytes (and the NUL) pass, the 256th byte without a NUL fails at once.
    #[test]
    fn bounds_the_user_id_and_the_host_at_255_bytes() {
        let head = [4, 1, 0, 80, 10, 0, 0, 1];
        let head_4a = [4, 1, 0, 80, 0, 0, 0, 1];
        let with = |head: &[u8], parts: &[&[u8]]| {
            let mut bytes = head.to_vec();
            for part in parts {
                bytes.extend_from_slice(part);
            }
            bytes
        };
        let user_255 = vec![b'u'; 255];
        let user_256 = vec![b'u'; 256];
        let host_255 = "h".repeat(255);
        let host_256 = "h".repeat(256);

        let ok = with(&head, &[&user_255, &[0]]);
        assert_eq!(
            decode(&ok).expect("valid"),
            Decoded::Done(request(Command::Connect, v4("10.0.0.1:80"), &user_255), 264)
        );
        // 255 bytes and no NUL yet: one more byte may still end it.
        assert_eq!(decode(&with(&head, &[&user_255])), Ok(Decoded::NeedMore(1)));
        assert_eq!(
            decode(&with(&head, &[&user_256])),
            Err(Socks4Error::UserIdTooLong)
        );
        assert_eq!(
            decode(&with(&head, &[&user_256, &[0]])),
            Err(Socks4Error::UserIdTooLong)
        );

        let ok = with(&head_4a, &[&user_255, &[0], host_255.as_bytes(), &[0]]);
        assert_eq!(
            decode(&ok).expect("valid"),
            Decoded::Done(
                request(
                    Command::Connect,
                    Address::Domain(host_255.clone(), 80),
                    &user_255
                ),
                8 + 256 + 256
            )
        );
        assert_eq!(
            decode(&with(&head_4a, &[&[0], host_255.as_bytes()])),
            Ok(Decoded::NeedMore(1))
        );
        assert_eq!(
            decode(&with(&head_4a, &[&[0], host_256.as_bytes()])),
            Err(Socks4Error::HostTooLong)
        );
        assert_eq!(
            decode(&with(&head_4a, &[&[0], host_256.as_bytes(), &[0]])),
            Err(Socks4Error::HostTooLong)
        );
        // A user id too long is refused in a SOCKS4a request too.
        assert_eq!(
            decode(&with(&head_4a, &[&user_256])),
            Err(Socks4Error::UserIdTooLong)
        );
    }

    #[test]
    fn missing_nuls_need_more_and_never_too_much() {
        // SOCKS4: the user id's NUL is missing.
        assert_eq!(
            decode(&[4, 1, 0, 80, 10, 0, 0, 1]),
            Ok(Decoded::NeedMore(1))
        );
        assert_eq!(
            decode(&[4, 1, 0, 80, 10, 0, 0, 1, b'a', b'b']),
            Ok(Decoded::NeedMore(1))
        );
        // SOCKS4a: the user id's NUL, then a name byte and its NUL.
        assert_eq!(decode(&[4, 1, 0, 80, 0, 0, 0, 1]), Ok(Decoded::NeedMore(3)));
        assert_eq!(
            decode(&[4, 1, 0, 80, 0, 0, 0, 1, b'a']),
            Ok(Decoded::NeedMore(3))
        );
        assert_eq!(
            decode(&[4, 1, 0, 80, 0, 0, 0, 1, 0]),
            Ok(Decoded::NeedMore(2))
        );
        assert_eq!(
            decode(&[4, 1, 0, 80, 0, 0, 0, 1, 0, b'h']),
            Ok(Decoded::NeedMore(1))
        );
    }

    #[test]
    fn every_cut_of_a_request_needs_more() {
        let socks4 = b"\x04\x01\x00\x50\x0a\x00\x00\x01alice\x00".as_slice();
        let socks4a = b"\x04\x02\x00\x50\x00\x00\x00\x01alice\x00a.test\x00".as_slice();
        for whole in [socks4, socks4a] {
            for cut in 0..whole.len() {
                match decode(&whole[..cut]) {
                    Ok(Decoded::NeedMore(n)) => {
                        assert!(n >= 1 && n <= whole.len() - cut, "cut {cut}: {n}");
                    }
                    other => panic!("cut {cut} of {whole:02x?}: {other:?}"),
                }
            }
            assert!(matches!(decode(whole), Ok(Decoded::Done(_, used)) if used == whole.len()));
        }
        assert_eq!(decode(&[]), Ok(Decoded::NeedMore(9)));
        assert_eq!(decode(&[4, 1]), Ok(Decoded::NeedMore(7)));
    }

    #[test]
    fn encodes_requests_and_refuses_what_does_not_fit() {
        let mut out = Vec::new();
        encode_request(
            &request(Command::Connect, v4("10.0.0.1:80"), b"bob"),
            &mut out,
        )
        .expect("fits");
        assert_eq!(out, b"\x04\x01\x00\x50\x0a\x00\x00\x01bob\x00");
        out.clear();
        encode_request(
            &request(Command::Bind, Address::Domain("a.test".into(), 443), b""),
            &mut out,
        )
        .expect("fits");
        assert_eq!(out, b"\x04\x02\x01\xbb\x00\x00\x00\x01\x00a.test\x00");

        out.clear();
        let refused = [
            request(Command::Connect, v4("[::1]:80"), b""),
            request(Command::Connect, v4("0.0.0.9:80"), b""),
            request(Command::Connect, v4("10.0.0.1:80"), b"a\0b"),
            request(Command::Connect, v4("10.0.0.1:80"), &[b'u'; 256]),
            request(Command::Connect, Address::Domain(String::new(), 1), b""),
            request(Command::Connect, Address::Domain("h".repeat(256), 1), b""),
            request(Command::Connect, Address::Domain("a\0b".into(), 1), b""),
        ];
        for request in refused {
            assert!(encode_request(&request, &mut out).is_err(), "{request:?}");
        }
        assert!(out.is_empty());
    }

    #[test]
    fn replies_are_eight_bytes() {
        let codes = [
            (ReplyCode::Granted, 90),
            (ReplyCode::Rejected, 91),
            (ReplyCode::IdentdUnreachable, 92),
            (ReplyCode::IdentdMismatch, 93),
        ];
        for (code, byte) in codes {
            let reply = Reply {
                code,
                address: "192.0.2.1:4660".parse().expect("valid"),
            };
            let mut out = Vec::new();
            encode_reply(&reply, &mut out);
            assert_eq!(out, [0, byte, 0x12, 0x34, 192, 0, 2, 1]);
            assert_eq!(decode_reply(&out), Ok(Decoded::Done(reply, REPLY_LEN)));
            for cut in 0..REPLY_LEN {
                assert_eq!(
                    decode_reply(&out[..cut]),
                    Ok(Decoded::NeedMore(REPLY_LEN - cut))
                );
            }
        }
        let mut out = Vec::new();
        encode_reply(&Reply::new(ReplyCode::Rejected), &mut out);
        assert_eq!(out, [0, 91, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_reply(&[4]), Err(Socks4Error::ReplyVersion(4)));
        assert_eq!(decode_reply(&[0, 89]), Err(Socks4Error::UnknownReply(89)));
        assert_eq!(decode_reply(&[0, 94]), Err(Socks4Error::UnknownReply(94)));
    }

    #[test]
    fn commands_map_to_the_socks5_ones() {
        assert_eq!(
            super::super::Command::from(Command::Connect),
            super::super::Command::Connect
        );
        assert_eq!(
            super::super::Command::from(Command::Bind),
            super::super::Command::Bind
        );
    }

    fn destination() -> impl Strategy<Value = Address> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_filter("not a SOCKS4a marker", |(ip, _)| ip[..3] != [0, 0, 0]
                    || ip[3] == 0)
                .prop_map(|(ip, port)| Address::Ip(SocketAddr::from((ip, port)))),
            ("[a-z0-9.-]{1,255}", any::<u16>())
                .prop_map(|(name, port)| Address::Domain(name, port)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Decoded::Done(_, used)) = decode_request(&bytes) {
                prop_assert!(used <= bytes.len());
            }
            if let Ok(Decoded::NeedMore(n)) = decode_request(&bytes) {
                prop_assert!(n >= 1);
            }
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn requests_round_trip(
            connect in any::<bool>(),
            destination in destination(),
            user_id in proptest::collection::vec(1u8..=255, 0..=255),
        ) {
            let command = if connect { Command::Connect } else { Command::Bind };
            let request = Request { command, destination, user_id };
            let mut out = Vec::new();
            encode_request(&request, &mut out).expect("fits");
            for cut in 0..out.len() {
                match decode_request(&out[..cut]) {
                    Ok(Decoded::NeedMore(n)) => prop_assert!(n >= 1 && n <= out.len() - cut),
                    other => prop_assert!(false, "cut {} gave {:?}", cut, other),
                }
            }
            let mut longer = out.clone();
            longer.extend_from_slice(b"\x00trailing");
            prop_assert_eq!(decode_request(&longer), Ok(Decoded::Done(request.clone(), out.len())));
            prop_assert_eq!(decode_request(&out), Ok(Decoded::Done(request, out.len())));
        }
    }
}
