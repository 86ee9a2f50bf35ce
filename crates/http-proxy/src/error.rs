//! The one error type of the crate, and its mapping to a status code.

use std::io;
use std::time::Duration;

use hyper::StatusCode;

use crate::dial::{DialError, Target};

/// What went wrong with a request or a connection. A request's error is answered with
/// [`Error::status`]; the last one is kept in the [`crate::SessionReport`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A CONNECT whose target is not authority-form `host:port` (RFC 9110 §9.3.6).
    #[error("CONNECT target {0:?} is not host:port")]
    ConnectTarget(String),
    /// A request other than CONNECT whose target is not an absolute `http://` URI (an
    /// origin-form request: this is a proxy, not an origin server).
    #[error("request target {0:?} is not an absolute http:// URI")]
    NotAbsolute(String),
    /// An absolute `https://` URI: the proxy cannot speak TLS to the origin for the client,
    /// which should use CONNECT.
    #[error("request target {0:?} is https: use CONNECT")]
    Https(String),
    /// No usable `Proxy-Authorization: Basic` credential where one is required.
    #[error("proxy authentication required")]
    AuthRequired,
    /// A `Basic` credential with an unknown user or a wrong password.
    #[error("authentication failed")]
    AuthFailed,
    /// The [`crate::Dialer`] could not open the connection.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The connection to the origin failed (before or while sending the response head).
    #[error("origin {target}: {error}")]
    Upstream {
        /// The origin.
        target: Target,
        /// What hyper said.
        error: hyper::Error,
    },
    /// The origin sent no response head in time.
    #[error("origin {target} sent no response head within {limit:?}")]
    UpstreamTimeout {
        /// The origin.
        target: Target,
        /// `response_timeout`.
        limit: Duration,
    },
    /// The client's HTTP connection failed: a malformed or too large request head (hyper
    /// answered 400 or 431 itself), no head within `header_read_timeout`, or an I/O error.
    #[error("client connection: {0}")]
    Http(#[source] hyper::Error),
    /// The client's connection could not be taken over for the tunnel after the 200.
    #[error("CONNECT upgrade: {0}")]
    Upgrade(#[source] hyper::Error),
    /// The tunnel failed while relaying.
    #[error("tunnel to {target}: {error}")]
    Tunnel {
        /// The CONNECT target.
        target: Target,
        /// The I/O error.
        error: io::Error,
    },
}

impl Error {
    /// The status code that answers this error, or `None` for errors that happen when no
    /// response can be sent any more (the connection or the tunnel failed).
    ///
    /// - a bad CONNECT target, an origin-form request, an `https://` absolute URI: 400;
    /// - no credential or a wrong one: 407 (with `Proxy-Authenticate`);
    /// - the dialer's errors by [`DialError::status`]: 403 denied, 502 unreachable, 504 timeout;
    /// - the origin failing: 502; the origin silent: 504.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::ConnectTarget(_) | Error::NotAbsolute(_) | Error::Https(_) => {
                Some(StatusCode::BAD_REQUEST)
            }
            Error::AuthRequired | Error::AuthFailed => {
                Some(StatusCode::PROXY_AUTHENTICATION_REQUIRED)
            }
            Error::Dial(error) => Some(error.status()),
            Error::Upstream { .. } => Some(StatusCode::BAD_GATEWAY),
            Error::UpstreamTimeout { .. } => Some(StatusCode::GATEWAY_TIMEOUT),
            Error::Http(_) | Error::Upgrade(_) | Error::Tunnel { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_request_errors_to_status_codes() {
        let target = Target::Domain("a.test".into(), 80);
        let table = [
            (Error::ConnectTarget("/x".into()), Some(400)),
            (Error::NotAbsolute("/".into()), Some(400)),
            (Error::Https("https://a.test/".into()), Some(400)),
            (Error::AuthRequired, Some(407)),
            (Error::AuthFailed, Some(407)),
            (
                Error::Dial(DialError::Denied {
                    target: target.clone(),
                }),
                Some(403),
            ),
            (
                Error::UpstreamTimeout {
                    target: target.clone(),
                    limit: Duration::from_secs(1),
                },
                Some(504),
            ),
            (
                Error::Tunnel {
                    target,
                    error: io::ErrorKind::BrokenPipe.into(),
                },
                None,
            ),
        ];
        for (error, status) in table {
            assert_eq!(error.status().map(|s| s.as_u16()), status, "{error:?}");
        }
    }
}
