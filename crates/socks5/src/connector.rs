//! The outbound side's seam: [`Connector`] makes one connection for the core (a leaf: it
//! names no other module of the crate, so the options and the core can both use it).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

/// A byte stream the relay can carry: anything async, readable and writable.
pub trait ProxyStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ProxyStream for T {}

/// An outbound connection, as a [`Connector`] makes it.
pub enum Outbound {
    /// A TCP socket: relayed with splice(2) when the client's side is a TCP socket too, and
    /// checked against the server's own listening addresses once connected.
    Tcp(TcpStream),
    /// Any other stream (a TLS session, an in-memory pipe in a test): relayed by copying.
    Stream(Box<dyn ProxyStream>),
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outbound::Tcp(stream) => f.debug_tuple("Tcp").field(stream).finish(),
            Outbound::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// The future a [`Connector`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Outbound>> + Send + 'a>>;

/// Makes one outbound connection to an address the rules already allowed, or to an upstream
/// proxy (`via`).
///
/// The core calls it once per attempt (Happy Eyeballs may run several at once and drops the
/// losers' futures), always within `connect_timeout`; the error's kind decides the reply
/// ([`crate::Error::reply`]). The default, [`DirectConnector`], opens a TCP socket bound to
/// `outbound_bind` if set.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use socks5::{ConnectFuture, Connector, Outbound};
///
/// /// Connects everything to one fixed address (a test double, say).
/// struct Pinned(SocketAddr);
///
/// impl Connector for Pinned {
///     fn connect(&self, _address: SocketAddr, _bind: Option<IpAddr>) -> ConnectFuture<'_> {
///         Box::pin(async move {
///             Ok(Outbound::Tcp(tokio::net::TcpStream::connect(self.0).await?))
///         })
///     }
/// }
///
/// let options = socks5::ServerOptions::builder()
///     .connector(Pinned("127.0.0.1:8080".parse().unwrap()))
///     .build();
/// # let _ = options;
/// ```
pub trait Connector: Send + Sync {
    /// Connects to `address`, from `bind` (the `outbound_bind` option) when given.
    fn connect(&self, address: SocketAddr, bind: Option<IpAddr>) -> ConnectFuture<'_>;
}

/// The default [`Connector`]: a plain TCP connection, its socket bound to `bind` when given.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectConnector;

impl Connector for DirectConnector {
    fn connect(&self, address: SocketAddr, bind: Option<IpAddr>) -> ConnectFuture<'_> {
        Box::pin(async move {
            let socket = if address.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = bind {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            Ok(Outbound::Tcp(socket.connect(address).await?))
        })
    }
}
