//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929): the messages as pure
//! values, a server session, and a client.
//!
//! # Layout
//!
//! - [`wire`]: every message of both RFCs as a plain type, with pure `decode_*` functions
//!   (answering [`wire::Decoded::NeedMore`] or [`wire::Decoded::Done`]) and `encode_*`
//!   functions. No I/O, no panics on any input.
//! - [`Error`]: the one error type, and [`Error::reply`], the one place that maps an error to a
//!   reply code.
//! - [`serve`] with [`ServerOptions`] (built by [`ServerOptions::builder`]): one server session
//!   on an accepted connection, over any `AsyncRead + AsyncWrite` stream (negotiation, login,
//!   CONNECT, BIND, UDP ASSOCIATE, relaying) ending in a [`SessionReport`]. The caller binds,
//!   accepts, limits the number of sessions and logs the report; this crate never binds a
//!   listening socket of its own except BIND's and UDP ASSOCIATE's.
//! - [`core`]: the proxy core every front door shares: judge the client, the name, resolve,
//!   judge each address, connect through a [`Connector`] ([`DirectConnector`] by default),
//!   relay (splice(2) when both ends are TCP sockets).
//! - [`Authenticator`]: who must log in and checking logins, returning the user; the default
//!   is [`AuthPolicy`], whose passwords are compared in constant time.
//! - [`Rules`]: ordered allow/deny rules on client networks, destination networks, domain
//!   patterns and ports, behind a built-in rule that always refuses unspecified, broadcast
//!   and multicast destinations ([`Rules::never_allowed`]). A CONNECT to the server's own
//!   listening address ([`ServerOptions::listen_addresses`]) is refused too.
//! - [`Via`] and [`Upstream`]: where allowed CONNECTs leave: directly, or through an upstream
//!   SOCKS5 or HTTP CONNECT proxy (per rule, or for the whole server).
//! - [`Requester`]: who a rule judges, the client's IP and the user it logged in as (rules
//!   can name `users`).
//! - [`Resolver`]: how domain names are resolved ([`SystemResolver`], at most
//!   [`MAX_SYSTEM_LOOKUPS`] at once in the process; [`StaticResolver`]; or the caller's own).
//! - [`client`]: CONNECT, BIND and UDP ASSOCIATE through a proxy.
//!
//! The TCP relay waits for readiness before it takes a buffer and gives the buffer back when
//! the socket runs dry, so an idle tunnel holds no buffer.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use tokio::net::TcpListener;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> std::io::Result<()> {
//! let options = Arc::new(socks5::ServerOptions::default());
//! let listener = TcpListener::bind("127.0.0.1:1080").await?;
//! let stop = CancellationToken::new();
//! loop {
//!     let (stream, peer) = listener.accept().await?;
//!     let (options, stop) = (Arc::clone(&options), stop.child_token());
//!     tokio::spawn(async move {
//!         let report = socks5::serve(stream, peer, &options, stop).await;
//!         println!("{} {:?} {:?}", report.client, report.destination, report.error);
//!     });
//! }
//! # }
//! ```
//!
//! # Left out on purpose
//!
//! - GSSAPI (method X'01', RFC 1961) and any method but X'00' and X'02'.
//! - UDP fragmentation (RFC 1928 §7 makes it optional): datagrams with FRAG ≠ 0 are dropped.
//! - HTTP proxying: such greetings are recognised for the log and closed (the http-proxy
//!   crate serves HTTP; [`serve_socks4`] serves SOCKS4 and SOCKS4a).
//! - Configuration files, listening sockets, connection limits and logging the session line:
//!   those belong to the server crate.
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
pub mod client;
mod connector;
pub mod core;
mod error;
mod framing;
mod options;
mod relay;
mod resolve;
mod rules;
mod server;

mod via;
pub mod wire;

pub use auth::{AuthFuture, AuthPolicy, Authenticator, LoginFailure};
pub use core::{ConnectFuture, Connector, DirectConnector, Outbound, ProxyStream};
pub use error::Error;
pub use options::{Commands, ServerOptions, ServerOptionsBuilder};
pub use resolve::{MAX_SYSTEM_LOOKUPS, ResolveFuture, Resolver, StaticResolver, SystemResolver};
pub use rules::{Action, DomainPattern, Requester, Rule, Rules, Verdict, networks_cover_family};
pub use server::{SessionReport, serve, serve_socks4, sniff};
pub use via::{Upstream, UpstreamKind, Via};
pub use wire::{Address, Command, Reply};
