//! The way out: the [`Dialer`] a front door asks to open a connection to a target, and the
//! [`DialError`]s it may answer with.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hyper::StatusCode;
use hyper::http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where a client wants to go: an IP address and port, or a host name and port (resolved by
/// the [`Dialer`], which judges the name before resolving and each address after).
pub use socks5::Address as Target;

/// A connection the [`Dialer`] opened: a TCP stream, or a stream through an upstream proxy.
pub trait ProxyStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ProxyStream for T {}

/// The connection a [`Dialer`] returns.
pub type BoxedStream = Box<dyn ProxyStream>;

/// The future a [`Dialer`] returns.
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = Result<BoxedStream, DialError>> + Send + 'a>>;

/// Opens the connections a front door needs: the proxy core (judge the client and the name,
/// resolve, judge each address, connect directly or through an upstream) behind one call.
///
/// The front door bounds every call with its `dial_timeout` and drops the future when it stops
/// waiting.
pub trait Dialer: Send + Sync {
    /// A connection to `target` for `user` (the name a client logged in with, if it did).
    ///
    /// # Errors
    ///
    /// A [`DialError`]; its [`DialError::status`] is what the client is answered.
    fn dial<'a>(&'a self, target: &'a Target, user: Option<&'a str>) -> DialFuture<'a>;
}

/// Why a [`Dialer`] could not open a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// An access rule refused the client, the name or every address: 403 Forbidden.
    #[error("access rules deny {target}")]
    Denied {
        /// What was denied.
        target: Target,
    },
    /// The name did not resolve, or no address accepted the connection: 502 Bad Gateway.
    #[error("cannot reach {target}: {error}")]
    Unreachable {
        /// The requested target.
        target: Target,
        /// The last resolver or connect error.
        error: io::Error,
    },
    /// Resolving and connecting took too long: 504 Gateway Timeout.
    #[error("connecting to {target} took longer than {limit:?}")]
    Timeout {
        /// The requested target.
        target: Target,
        /// The limit that passed.
        limit: Duration,
    },
}

impl DialError {
    /// The status code that answers this error: 403 for [`DialError::Denied`], 502 for
    /// [`DialError::Unreachable`], 504 for [`DialError::Timeout`].
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            DialError::Denied { .. } => StatusCode::FORBIDDEN,
            DialError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
            DialError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The [`DialError`] for an error of the socks5 crate's connect path (the proxy core
    /// today), so that a [`Dialer`] built on it answers as a SOCKS5 client would be answered:
    /// a rule denial or the server's own address is [`DialError::Denied`], a connect or
    /// resolve timeout [`DialError::Timeout`], anything else [`DialError::Unreachable`].
    #[must_use]
    pub fn from_socks5(target: &Target, error: socks5::Error) -> Self {
        let target = target.clone();
        match error {
            socks5::Error::Denied { .. }
            | socks5::Error::ClientDenied { .. }
            | socks5::Error::OwnAddress { .. } => DialError::Denied { target },
            socks5::Error::ConnectTimeout { limit, .. } | socks5::Error::Timeout { limit, .. } => {
                DialError::Timeout { target, limit }
            }
            socks5::Error::Resolve { error, .. }
            | socks5::Error::Connect { error, .. }
            | socks5::Error::Io(error) => DialError::Unreachable { target, error },
            other => DialError::Unreachable {
                target,
                error: io::Error::other(other.to_string()),
            },
        }
    }
}

/// The target of an authority (`host:port`, `[v6]:port`, or without a port `default_port`):
/// an IP literal becomes [`Target::Ip`], anything else [`Target::Domain`]. `None` for an empty
/// host, or no port where one is required.
pub(crate) fn target_of(authority: &Authority, default_port: Option<u16>) -> Option<Target> {
    let port = authority.port_u16().or(default_port)?;
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => Target::Ip(SocketAddr::new(ip, port)),
        Err(_) => Target::Domain(host.to_owned(), port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(text: &str) -> Authority {
        text.parse().expect("valid authority")
    }

    #[test]
    fn reads_targets_from_authorities() {
        let table: [(&str, Option<u16>, Option<Target>); 8] = [
            (
                "example.test:443",
                None,
                Some(Target::Domain("example.test".into(), 443)),
            ),
            (
                "127.0.0.1:8080",
                None,
                Some(Target::Ip("127.0.0.1:8080".parse().expect("valid"))),
            ),
            (
                "[::1]:22",
                None,
                Some(Target::Ip("[::1]:22".parse().expect("valid"))),
            ),
            ("example.test", None, None),
            (
                "example.test",
                Some(80),
                Some(Target::Domain("example.test".into(), 80)),
            ),
            (
                "user:pw@example.test:81",
                Some(80),
                Some(Target::Domain("example.test".into(), 81)),
            ),
            (":80", None, None),
            (
                "a.test:65535",
                None,
                Some(Target::Domain("a.test".into(), 65535)),
            ),
        ];
        for (text, default, expected) in table {
            assert_eq!(target_of(&authority(text), default), expected, "{text}");
        }
    }

    #[test]
    fn maps_every_dial_error_to_its_status() {
        let target = Target::Domain("a.test".into(), 1);
        let table = [
            (
                DialError::Denied {
                    target: target.clone(),
                },
                403,
            ),
            (
                DialError::Unreachable {
                    target: target.clone(),
                    error: io::ErrorKind::ConnectionRefused.into(),
                },
                502,
            ),
            (
                DialError::Timeout {
                    target: target.clone(),
                    limit: Duration::from_secs(1),
                },
                504,
            ),
        ];
        for (error, status) in table {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn maps_socks5_connect_errors() {
        let target = Target::Domain("a.test".into(), 1);
        let address: SocketAddr = "127.0.0.1:1".parse().expect("valid");
        let table = [
            (
                socks5::Error::Denied {
                    target: target.clone(),
                },
                403,
            ),
            (
                socks5::Error::ClientDenied {
                    client: address.ip(),
                },
                403,
            ),
            (socks5::Error::OwnAddress { address }, 403),
            (
                socks5::Error::ConnectTimeout {
                    target: target.clone(),
                    limit: Duration::from_secs(1),
                },
                504,
            ),
            (
                socks5::Error::Connect {
                    address,
                    error: io::ErrorKind::ConnectionRefused.into(),
                },
                502,
            ),
            (
                socks5::Error::Resolve {
                    host: "a.test".into(),
                    error: io::ErrorKind::NotFound.into(),
                },
                502,
            ),
            (socks5::Error::EmptyDomain, 502),
        ];
        for (error, status) in table {
            let text = error.to_string();
            assert_eq!(
                DialError::from_socks5(&target, error).status().as_u16(),
                status,
                "{text}"
            );
        }
    }
}
