//! An HTTP/1.1 proxy front door, on hyper: `CONNECT host:port` tunnels (RFC 9110 §9.3.6) and
//! absolute-form `http://` requests forwarded to their origin with keep-alive (RFC 9112
//! §3.2.2), with `Proxy-Authorization: Basic` logins (RFC 9110 §11.7.2, RFC 7617).
//!
//! # Layout
//!
//! - [`HttpProxy`] with [`ProxyOptions`]: serves one accepted client connection (any
//!   `AsyncRead + AsyncWrite`) with hyper's HTTP/1.1 server and ends in a [`SessionReport`].
//!   hyper parses every request head; a malformed one is answered 400, one larger than
//!   `max_header_len` 431, and the connection closed; a head not complete within
//!   `header_read_timeout` closes it.
//! - [`Dialer`]: how a connection to a [`Target`] is opened; the proxy core (rules, resolving,
//!   connecting directly or through an upstream) sits behind it. [`DialError`] answers 403
//!   (denied), 502 (unreachable) or 504 (timeout).
//! - [`BasicAuth`]: who must log in and whether a password is right; [`socks5::AuthPolicy`]
//!   implements it, so the SOCKS5 users log in here too.
//! - [`Error`]: the one error type, and [`Error::status`], the one place that maps an error to
//!   a status code.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use http_proxy::{BoxedStream, DialError, DialFuture, Dialer, HttpProxy, ProxyOptions, Target};
//! use tokio::net::{TcpListener, TcpStream};
//! use tokio_util::sync::CancellationToken;
//!
//! /// Connects to IP targets only, with no rules: an example, not a proxy to deploy.
//! struct Direct;
//!
//! impl Dialer for Direct {
//!     fn dial<'a>(&'a self, target: &'a Target, _user: Option<&'a str>) -> DialFuture<'a> {
//!         Box::pin(async move {
//!             let unreachable = |error| DialError::Unreachable { target: target.clone(), error };
//!             let Target::Ip(address) = target else {
//!                 return Err(unreachable(std::io::ErrorKind::Unsupported.into()));
//!             };
//!             let stream = TcpStream::connect(address).await.map_err(unreachable)?;
//!             Ok(Box::new(stream) as BoxedStream)
//!         })
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let proxy = HttpProxy::new(ProxyOptions::default(), Arc::new(Direct));
//! let listener = TcpListener::bind("127.0.0.1:3128").await?;
//! let stop = CancellationToken::new();
//! loop {
//!     let (stream, peer) = listener.accept().await?;
//!     let (proxy, stop) = (proxy.clone(), stop.child_token());
//!     tokio::spawn(async move {
//!         let report = proxy.serve(stream, peer, stop).await;
//!         println!("{} {:?} {:?}", report.client, report.last_status, report.error);
//!     });
//! }
//! # }
//! ```
//!
//! # Left out on purpose
//!
//! - Listening sockets, connection limits, access rules, resolving and logging the session
//!   line: the caller's (the server crate and the proxy core behind the [`Dialer`]).
//! - `https://` absolute-form requests (400: a client uses CONNECT for TLS), HTTP/2, and
//!   `Upgrade` (WebSocket) through absolute-form requests.
//! - Retrying a request on a fresh origin connection when a kept one was closed under it: the
//!   client gets 502 and may retry.
//! - splice(2): the tunnel relay copies (with [`ProxyOptions::idle_timeout`] set, through the
//!   socks5 proxy core's relay, which ends idle tunnels; without it, `copy_bidirectional`).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod auth;
mod counted;
mod dial;
mod error;
mod forward;
mod options;
mod proxy;

pub use auth::{AuthFuture, BasicAuth, LoginFailure};
pub use dial::{BoxedStream, DialError, DialFuture, Dialer, ProxyStream, Target};
pub use error::Error;
/// The request methods of [`SessionReport::last_method`] (hyper's).
pub use hyper::Method;
pub use options::{MIN_HEADER_LEN, ProxyOptions};
pub use proxy::{Body, HttpProxy, REALM, SessionReport};
