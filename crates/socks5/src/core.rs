//! The proxy core: every step a proxy front door (SOCKS5 here; SOCKS4a and HTTP CONNECT later)
//! shares once it has parsed its request.
//!
//! [`open`] judges and connects: judge the client → judge the destination by name → resolve →
//! judge each address → connect through the [`Connector`] (Happy Eyeballs between the allowed
//! addresses) or through an upstream proxy when the deciding rule says `via`. [`relay`] then
//! moves the bytes (with splice(2) when both ends are TCP sockets). A front door only parses its
//! handshake, calls these two, and writes its replies from [`crate::Error::reply`] (or its own
//! mapping of the same errors).

mod eyeballs;
mod own;
mod upstream;

use std::any::Any;

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

use crate::options::ServerOptions;
use crate::resolve::lookup;
use crate::rules::{Action, Requester};
use crate::via::{Upstream, Via};
use crate::wire::Address;
use crate::{Error, relay as tcp_relay};

pub use crate::connector::{ConnectFuture, Connector, DirectConnector, Outbound, ProxyStream};
pub use crate::relay::Relayed;

use eyeballs::Candidate;
pub(crate) use own::OwnListeners;

/// One request for the core to open: who asks, for what.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The client's IP (IPv4-mapped addresses are judged as IPv4).
    pub client: IpAddr,
    /// The user it logged in as, if it did.
    pub user: Option<&'a str>,
    /// Where it wants to go.
    pub destination: &'a Address,
    /// The local address of the client's connection (the listener it reached), if known: a
    /// destination that reaches it is refused ([`crate::Error::OwnAddress`]).
    pub reached: Option<SocketAddr>,
}

impl<'a> Request<'a> {
    /// A request from `client` for `destination`, with no user and no known listener address.
    #[must_use]
    pub fn new(client: IpAddr, destination: &'a Address) -> Self {
        Request {
            client: client.to_canonical(),
            user: None,
            destination,
            reached: None,
        }
    }

    /// The same request, from `user`.
    #[must_use]
    pub fn user(mut self, user: Option<&'a str>) -> Self {
        self.user = user;
        self
    }

    /// The same request, reaching the listener at `reached`.
    #[must_use]
    pub fn reached(mut self, reached: Option<SocketAddr>) -> Self {
        self.reached = reached;
        self
    }
}

/// A connection [`open`] made, ready for [`relay`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Opened {
    /// The connection to the target (or to the upstream proxy, past its handshake).
    pub stream: Outbound,
    /// Bytes the target already sent that were read with an upstream's answer: they go to the
    /// client first.
    pub early: Bytes,
    /// The upstream proxy it went through, if any.
    pub via: Option<Upstream>,
    /// The outbound socket's local address, when [`attempt`] already read it.
    pub(crate) local: Option<SocketAddr>,
}

impl Opened {
    /// A connection opened elsewhere (another front door's dialer), to [`relay`]: `early`
    /// bytes go to the client first.
    #[must_use]
    pub fn new(stream: Outbound, early: Bytes) -> Self {
        Opened {
            stream,
            early,
            via: None,
            local: None,
        }
    }

    /// The local address of the outbound socket (BND of a SOCKS5 reply), if it is a TCP
    /// socket.
    ///
    /// # Errors
    ///
    /// The socket's error; [`io::ErrorKind::Unsupported`] for a stream that is not TCP.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        if let Some(local) = self.local {
            return Ok(local);
        }
        match &self.stream {
            Outbound::Tcp(stream) => stream.local_addr(),
            Outbound::Stream(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

/// Judges `request` by `options.rules` and opens it, all within `options.connect_timeout`.
///
/// The client is judged first ([`crate::Rules::admits`]), then a name by name before it is
/// resolved ([`crate::Rules::check_name`]): a name allowed by a rule (or a default) whose
/// `via` names an upstream proxy goes there unresolved. Otherwise the name is resolved, each
/// address judged (a denied one is never attempted), and the allowed ones are connected,
/// through `options.connector` or the upstream of the rule that allowed them, with Happy
/// Eyeballs (RFC 8305): IPv6 and IPv4 interleaved, IPv6 first,
/// the next attempt started after `options.happy_eyeballs_delay` or at once when one fails,
/// the first to connect kept and the others dropped.
///
/// # Errors
///
/// [`Error::ClientDenied`] or [`Error::Denied`] (X'02'), [`Error::OwnAddress`] (X'02'),
/// [`Error::Resolve`] (X'04'), [`Error::ConnectTimeout`] (X'04'), [`Error::Connect`] by its
/// kind, [`Error::Upstream`] or [`Error::UpstreamStatus`] for a failure through an upstream.
pub async fn open(options: &ServerOptions, request: &Request<'_>) -> Result<Opened, Error> {
    let client = Requester::new(request.client, request.user);
    if !options.rules.admits(client) {
        return Err(Error::ClientDenied { client: client.ip });
    }
    let own = OwnListeners::new(&options.listen_addresses, request.reached);
    let destination = request.destination;
    let limit = options.connect_timeout;
    let work = async {
        match judge(options, client, destination, true).await? {
            // Allowed by name: the upstream resolves the name itself.
            Judged::Upstream(upstream) => upstream::open(upstream, destination, options).await,
            Judged::Addresses(candidates) => eyeballs::race(candidates, options, &own).await,
        }
    };
    timeout(limit, work)
        .await
        .map_err(|_| Error::ConnectTimeout {
            target: destination.clone(),
            limit,
        })?
}

/// What the rules made of a destination.
pub(crate) enum Judged<'a> {
    /// Allowed by name, to go unresolved through this upstream.
    Upstream(&'a Upstream),
    /// The allowed addresses (never none), each with the upstream it goes through.
    Addresses(Vec<Candidate<'a>>),
}

/// Judges `destination` for `client` (and its user): an IP destination as that IP; a name by name, then
/// (resolved by `options.resolver`) each of its addresses. With `chain`, a name allowed by
/// name with an upstream is not resolved ([`Judged::Upstream`]); without (BIND, which is
/// never chained), it is. The caller bounds the lookup with its timeout.
///
/// # Errors
///
/// [`Error::Denied`] when the rules deny the destination or every address of the name,
/// [`Error::Resolve`] when the name does not resolve.
pub(crate) async fn judge<'a>(
    options: &'a ServerOptions,
    client: Requester<'_>,
    destination: &Address,
    chain: bool,
) -> Result<Judged<'a>, Error> {
    let rules = &options.rules;
    match destination {
        Address::Ip(address) => {
            let address = SocketAddr::new(address.ip().to_canonical(), address.port());
            let verdict = rules.route(client, None, address.ip(), address.port());
            if verdict.action == Action::Deny {
                return Err(denied(destination));
            }
            let via = upstream_of(verdict.via, &options.via);
            Ok(Judged::Addresses(vec![(address, via)]))
        }
        Address::Domain(host, port) => {
            match rules.route_name(client, host, *port) {
                Some(verdict) if verdict.action == Action::Deny => {
                    return Err(denied(destination));
                }
                Some(verdict) if chain => {
                    if let Some(upstream) = upstream_of(verdict.via, &options.via) {
                        return Ok(Judged::Upstream(upstream));
                    }
                }
                Some(_) | None => {}
            }
            let mut allowed = Vec::new();
            for address in lookup(&*options.resolver, host, *port).await? {
                let verdict = rules.route(client, Some(host), address.ip(), address.port());
                if verdict.action == Action::Deny {
                    debug!(%host, %address, "rules deny this address of the name");
                    continue;
                }
                allowed.push((address, upstream_of(verdict.via, &options.via)));
            }
            if allowed.is_empty() {
                return Err(denied(destination));
            }
            Ok(Judged::Addresses(allowed))
        }
    }
}

/// The upstream a request goes through: the deciding rule's `via`, else the server's; `direct`
/// at either level means none.
fn upstream_of<'a>(rule: Option<&'a Via>, server: &'a Via) -> Option<&'a Upstream> {
    match rule.unwrap_or(server) {
        Via::Direct => None,
        Via::Upstream(upstream) => Some(upstream),
    }
}

fn denied(destination: &Address) -> Error {
    Error::Denied {
        target: destination.clone(),
    }
}

/// One attempt: connects to `address` through `via` (the address, not a name, goes to the
/// upstream), or through the connector unless it is, or turns out to be, one of the server's
/// own listeners.
pub(crate) async fn attempt(
    address: SocketAddr,
    via: Option<&Upstream>,
    options: &ServerOptions,
    own: &OwnListeners,
) -> Result<Opened, Error> {
    if let Some(upstream) = via {
        return upstream::open(upstream, &Address::Ip(address), options).await;
    }
    if own.reached_by(address, None)
        || (own.wildcard_on(address.port()) && own::is_local_address(address.ip()))
    {
        return Err(Error::OwnAddress { address });
    }
    let stream = options
        .connector
        .connect(address, options.outbound_bind)
        .await
        .map_err(|error| Error::Connect { address, error })?;
    let mut local = None;
    if let Outbound::Tcp(stream) = &stream {
        // Read once: the check below and the reply's BND both need it.
        let source = stream.local_addr()?;
        local = Some(source);
        // A connection reaches the address it was asked for, except the unspecified address
        // (and, to be safe, the rest of 0.0.0.0/8), which the kernel turns into a local one:
        // only then is the peer worth a getpeername(2).
        let translated = match address.ip() {
            IpAddr::V4(ip) => ip.octets()[0] == 0,
            IpAddr::V6(ip) => {
                ip.is_unspecified() || ip.to_ipv4_mapped().is_some_and(|v4| v4.octets()[0] == 0)
            }
        };
        let reached = if translated {
            stream.peer_addr()?
        } else {
            address
        };
        if own.reached_by(reached, Some(source.ip())) {
            return Err(Error::OwnAddress { address: reached });
        }
    }
    Ok(Opened {
        stream,
        early: Bytes::new(),
        via: None,
        local,
    })
}

/// Relays between `client` and the opened target until both directions end, an error, or
/// `options.idle_timeout` without traffic. `pending` (what the client sent after its request)
/// goes to the target first, and the target's early bytes to the client. When both ends are
/// TCP sockets the bulk of the data moves with splice(2); otherwise it is copied through
/// buffers of `options.relay_buffer_len`.
pub async fn relay<S>(
    client: &mut S,
    opened: Opened,
    pending: BytesMut,
    options: &ServerOptions,
) -> Relayed
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (buffer_len, idle) = (options.relay_buffer_len, options.idle_timeout);
    let early = opened.early;
    let mut target = opened.stream;
    if let Some(client) = (client as &mut dyn Any).downcast_mut::<TcpStream>() {
        return match &mut target {
            Outbound::Tcp(target) => {
                for stream in [&*client, &*target] {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%error, "cannot set TCP_NODELAY");
                    }
                }
                tcp_relay::relay(client, target, pending, early, buffer_len, idle).await
            }
            Outbound::Stream(target) => {
                tcp_relay::relay_streams(client, target, pending, early, buffer_len, idle).await
            }
        };
    }
    match &mut target {
        Outbound::Tcp(target) => {
            tcp_relay::relay_streams(client, target, pending, early, buffer_len, idle).await
        }
        Outbound::Stream(target) => {
            tcp_relay::relay_streams(client, target, pending, early, buffer_len, idle).await
        }
    }
}
