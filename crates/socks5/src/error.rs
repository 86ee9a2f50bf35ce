//! The one error type of the crate, and its mapping to a SOCKS reply code.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::wire::{Address, Command, Reply};

/// Everything that can go wrong in this crate: malformed bytes, a peer that stops, a refused
/// login, a rule, an unreachable target.
///
/// The server answers a failed request with [`Error::reply`]; after a failure reply it closes
/// the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The first byte of a SOCKS message was not 5.
    #[error("peer spoke SOCKS version {0:#04x}, not 5")]
    Version(u8),
    /// A greeting that is not SOCKS at all; the string says what it looked like.
    #[error("peer did not speak SOCKS5: its first bytes looked like {looks_like}")]
    NotSocks5 {
        /// A description from [`crate::sniff`], such as `"an HTTP request"`.
        looks_like: &'static str,
    },
    /// The first byte of an RFC 1929 message was not 1.
    #[error("username/password sub-negotiation version {0:#04x}, expected 0x01")]
    AuthVersion(u8),
    /// A request with a CMD other than CONNECT, BIND or UDP ASSOCIATE.
    #[error("unknown command {0:#04x}")]
    Command(u8),
    /// A known command that the server's options turn off.
    #[error("command {0:?} is disabled on this server")]
    CommandDisabled(Command),
    /// An ATYP other than IPv4, domain name or IPv6.
    #[error("address type {0:#04x} is not supported")]
    AddressType(u8),
    /// A domain-name address of length zero.
    #[error("empty domain name")]
    EmptyDomain,
    /// A value too long for its one-byte length field, found while encoding.
    #[error("{field} is {len} bytes long, at most 255 fit")]
    TooLong {
        /// Which field: `"domain name"`, `"username"`, `"password"` or `"method list"`.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A domain pattern for the access rules that is neither `name` nor `*.name`.
    #[error("domain pattern {0:?} is neither a name nor *.name")]
    DomainPattern(String),
    /// A reply whose REP code RFC 1928 does not assign.
    #[error("unknown reply code {0:#04x}")]
    UnknownReply(u8),
    /// The server picked a method that the client did not offer.
    #[error("server chose method {0:#04x}, which was not offered")]
    UnexpectedMethod(u8),
    /// The peer closed the connection before a message was complete.
    #[error("peer closed the connection during the {stage}")]
    Closed {
        /// What was being read, such as `"greeting"` or `"request"`.
        stage: &'static str,
    },
    /// A deadline passed.
    #[error("no complete {stage} within {limit:?}")]
    Timeout {
        /// What was being waited for, such as `"handshake"` or `"relay (idle)"`.
        stage: &'static str,
        /// The limit that passed.
        limit: Duration,
    },
    /// A relay (TCP) or an association (UDP) saw no traffic for `idle_timeout`.
    #[error("no traffic for {limit:?}")]
    Idle {
        /// `idle_timeout`.
        limit: Duration,
    },
    /// The session was cancelled (server shutdown) before its relay started.
    #[error("cancelled during the {stage}")]
    Cancelled {
        /// What the session was doing.
        stage: &'static str,
    },
    /// None of the methods the client offered is acceptable (method 0xFF was sent).
    #[error("no acceptable authentication method offered")]
    NoAcceptableMethod,
    /// Username/password authentication failed.
    #[error("authentication failed")]
    AuthFailed,
    /// An access rule denied the destination (or, for BIND, the incoming peer).
    #[error("access rules deny {target}")]
    Denied {
        /// What was denied.
        target: Address,
    },
    /// The rules deny this client everything, so nothing was opened for its request.
    #[error("access rules deny client {client} every destination")]
    ClientDenied {
        /// The client's IP (IPv4-mapped addresses as IPv4).
        client: IpAddr,
    },
    /// CONNECT: the destination is one of the server's own listening addresses. Serving it
    /// would loop back into the server and make the client look local to it.
    #[error("{address} is this server's own listening address")]
    OwnAddress {
        /// The address that reaches the server.
        address: SocketAddr,
    },
    /// BIND: a connection came from an address other than the expected peer.
    #[error("BIND expected a connection from {expected}, got one from {actual}")]
    UnexpectedPeer {
        /// DST.ADDR of the BIND request.
        expected: Address,
        /// Who connected.
        actual: SocketAddr,
    },
    /// A domain name could not be resolved (or resolved to no usable address).
    #[error("cannot resolve {host}: {error}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        error: io::Error,
    },
    /// An outbound connection attempt failed.
    #[error("cannot connect to {address}: {error}")]
    Connect {
        /// The address tried last.
        address: SocketAddr,
        /// Why it failed; its kind picks the reply code.
        error: io::Error,
    },
    /// The outbound connection (resolving and every attempt) did not complete in time.
    #[error("connecting to {target} took longer than {limit:?}")]
    ConnectTimeout {
        /// The requested destination.
        target: Address,
        /// `connect_timeout`.
        limit: Duration,
    },
    /// BIND: no peer connected in time.
    #[error("no peer connected to the BIND listener within {limit:?}")]
    BindTimeout {
        /// `bind_timeout`.
        limit: Duration,
    },
    /// A `via` that is not `direct`, `socks5://...` or `http://...` (the password is not
    /// shown).
    #[error("invalid upstream {0}")]
    Via(String),
    /// The upstream proxy a request went through failed it: it could not be reached, refused
    /// our login, or refused the request (its own reply code is in `error`).
    #[error("upstream {upstream}: {error}")]
    Upstream {
        /// The upstream, without its password.
        upstream: String,
        /// What went wrong there.
        error: Box<Error>,
    },
    /// An HTTP upstream answered CONNECT with a status other than 2xx.
    #[error("upstream {upstream} answered CONNECT with HTTP status {status}")]
    UpstreamStatus {
        /// The upstream, without its password.
        upstream: String,
        /// The status code.
        status: u16,
    },
    /// The SOCKS server answered a request with a failure code.
    #[error("proxy refused the request: {0:?}")]
    Rejected(Reply),
    /// A malformed SOCKS4 or SOCKS4a request.
    #[error("malformed SOCKS4 request: {0}")]
    Socks4(#[from] crate::wire::socks4::Socks4Error),
    /// A SOCKS4 request (which cannot carry a password) to a server that requires one from
    /// this client: refused with 91.
    #[error("SOCKS4 carries no password, and this client must log in (use SOCKS5)")]
    Socks4NeedsPassword,
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// The RFC 1928 §6 reply code that answers this error.
    ///
    /// - rule denials (also the built-in refusal of unspecified, broadcast and multicast
    ///   destinations, see [`crate::Rules::never_allowed`]), a client denied everything, a
    ///   CONNECT to the server's own listening address and an unexpected BIND peer:
    ///   [`Reply::NotAllowed`] (0x02);
    /// - unknown or disabled commands: [`Reply::CommandNotSupported`] (0x07);
    /// - unknown address types: [`Reply::AddressTypeNotSupported`] (0x08);
    /// - connect failures by their kind: refused → [`Reply::ConnectionRefused`] (0x05),
    ///   network unreachable → [`Reply::NetworkUnreachable`] (0x03), host unreachable →
    ///   [`Reply::HostUnreachable`] (0x04);
    /// - a name that does not resolve: [`Reply::HostUnreachable`] (0x04), since no host by that
    ///   name can be reached;
    /// - a connect or BIND timeout: [`Reply::HostUnreachable`] (0x04). The host did not answer
    ///   in time, which is what a client learns from an ICMP host-unreachable too; 0x06 (TTL
    ///   expired) would claim a routing loop, and 0x01 would hide that the target is at fault;
    /// - [`Error::Rejected`] gives back the reply it carries;
    /// - through an upstream proxy ([`Error::Upstream`]): a SOCKS5 upstream's reply passes
    ///   through (its X'05' is ours); an upstream that cannot be reached, refuses our login or
    ///   answers garbage is a server failure, X'01'. An HTTP upstream's status
    ///   ([`Error::UpstreamStatus`]): 403 → X'02', 404, 502 and 504 → X'04' (it could not
    ///   reach the destination), anything else (407 for a refused login) → X'01';
    /// - anything else: [`Reply::GeneralFailure`] (0x01). Errors before the request (bad
    ///   greeting, no acceptable method, failed login) are answered at their own stage and
    ///   never with a reply, so their mapping here is only nominal.
    #[must_use]
    pub fn reply(&self) -> Reply {
        match self {
            Error::Denied { .. }
            | Error::ClientDenied { .. }
            | Error::OwnAddress { .. }
            | Error::UnexpectedPeer { .. } => Reply::NotAllowed,
            Error::Command(_) | Error::CommandDisabled(_) => Reply::CommandNotSupported,
            Error::AddressType(_) => Reply::AddressTypeNotSupported,
            Error::Resolve { .. } | Error::ConnectTimeout { .. } | Error::BindTimeout { .. } => {
                Reply::HostUnreachable
            }
            Error::Connect { error, .. } => match error.kind() {
                io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
                io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
                io::ErrorKind::HostUnreachable | io::ErrorKind::TimedOut => Reply::HostUnreachable,
                _ => Reply::GeneralFailure,
            },
            Error::Rejected(reply) => *reply,
            Error::Upstream { error, .. } => match &**error {
                // The upstream's own answer about the destination passes through.
                Error::Rejected(reply) => *reply,
                // It could not be reached, refused our login, or spoke garbage: our failure.
                _ => Reply::GeneralFailure,
            },
            Error::UpstreamStatus { status, .. } => match status {
                403 => Reply::NotAllowed,
                404 | 502 | 504 => Reply::HostUnreachable,
                _ => Reply::GeneralFailure,
            },
            _ => Reply::GeneralFailure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn connect_error(kind: io::ErrorKind) -> Error {
        Error::Connect {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            error: io::Error::from(kind),
        }
    }

    fn upstream(error: Error) -> Error {
        Error::Upstream {
            upstream: "socks5://127.0.0.1:1080".into(),
            error: Box::new(error),
        }
    }

    fn status(status: u16) -> Error {
        Error::UpstreamStatus {
            upstream: "http://127.0.0.1:3128".into(),
            status,
        }
    }

    #[test]
    fn maps_every_error_to_its_reply_code() {
        let target = Address::Domain("example.test".into(), 80);
        let limit = Duration::from_secs(1);
        let table: Vec<(Error, u8)> = vec![
            (connect_error(io::ErrorKind::ConnectionRefused), 0x05),
            (connect_error(io::ErrorKind::NetworkUnreachable), 0x03),
            (connect_error(io::ErrorKind::HostUnreachable), 0x04),
            (connect_error(io::ErrorKind::TimedOut), 0x04),
            (connect_error(io::ErrorKind::AddrNotAvailable), 0x01),
            (connect_error(io::ErrorKind::PermissionDenied), 0x01),
            (
                Error::Connect {
                    address: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
                    error: io::Error::from_raw_os_error(101), // ENETUNREACH on Linux
                },
                if cfg!(target_os = "linux") {
                    0x03
                } else {
                    0x01
                },
            ),
            (
                Error::Resolve {
                    host: "nowhere.test".into(),
                    error: io::Error::from(io::ErrorKind::NotFound),
                },
                0x04,
            ),
            (
                Error::ConnectTimeout {
                    target: target.clone(),
                    limit,
                },
                0x04,
            ),
            (Error::BindTimeout { limit }, 0x04),
            (
                Error::Denied {
                    target: target.clone(),
                },
                0x02,
            ),
            (
                Error::ClientDenied {
                    client: Ipv4Addr::LOCALHOST.into(),
                },
                0x02,
            ),
            (
                Error::OwnAddress {
                    address: SocketAddr::from((Ipv4Addr::LOCALHOST, 1080)),
                },
                0x02,
            ),
            (
                Error::UnexpectedPeer {
                    expected: target,
                    actual: SocketAddr::from((Ipv4Addr::LOCALHOST, 2)),
                },
                0x02,
            ),
            (Error::Command(0x09), 0x07),
            (Error::CommandDisabled(Command::Bind), 0x07),
            (Error::AddressType(0x02), 0x08),
            (Error::Rejected(Reply::TtlExpired), 0x06),
            (Error::Version(4), 0x01),
            (Error::EmptyDomain, 0x01),
            (Error::DomainPattern("*".into()), 0x01),
            (Error::Closed { stage: "request" }, 0x01),
            (
                Error::Timeout {
                    stage: "handshake",
                    limit,
                },
                0x01,
            ),
            (Error::Cancelled { stage: "connect" }, 0x01),
            (Error::Idle { limit }, 0x01),
            (Error::NoAcceptableMethod, 0x01),
            (Error::AuthFailed, 0x01),
            (Error::Io(io::Error::from(io::ErrorKind::BrokenPipe)), 0x01),
            (upstream(Error::Rejected(Reply::ConnectionRefused)), 0x05),
            (upstream(Error::Rejected(Reply::NotAllowed)), 0x02),
            (upstream(Error::AuthFailed), 0x01),
            (
                upstream(connect_error(io::ErrorKind::ConnectionRefused)),
                0x01,
            ),
            (upstream(Error::Closed { stage: "reply" }), 0x01),
            (status(403), 0x02),
            (status(404), 0x04),
            (status(502), 0x04),
            (status(504), 0x04),
            (status(407), 0x01),
            (status(500), 0x01),
            (Error::Via("x".into()), 0x01),
        ];
        for (error, code) in table {
            assert_eq!(u8::from(error.reply()), code, "{error:?}");
        }
    }

    #[test]
    fn messages_name_the_offending_value() {
        assert_eq!(
            Error::Version(4).to_string(),
            "peer spoke SOCKS version 0x04, not 5"
        );
        assert_eq!(Error::Command(9).to_string(), "unknown command 0x09");
        assert_eq!(
            Error::Timeout {
                stage: "handshake",
                limit: Duration::from_millis(300)
            }
            .to_string(),
            "no complete handshake within 300ms"
        );
        let refused = Error::Connect {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            error: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(
            refused.to_string(),
            "cannot connect to 127.0.0.1:1: connection refused"
        );
    }
}
