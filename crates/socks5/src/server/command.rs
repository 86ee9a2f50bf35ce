//! CONNECT and BIND (RFC 1928 §4, §6); UDP ASSOCIATE lives in [`crate::udp`].

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{ServerOptions, Session, cancellable};
use crate::resolve::lookup;
use crate::rules::Action;
use crate::wire::{Address, Reply};
use crate::{Error, relay};

/// While BIND waits for its peer, at most this much of what the client sends is kept (to be
/// relayed first); beyond it the client is simply not read until the peer arrives.
const MAX_BIND_PENDING_LEN: usize = 64 * 1024;

impl Session<'_> {
    /// CONNECT: open the target, reply with the outbound socket's address, relay.
    pub(super) async fn connect(
        &mut self,
        destination: &Address,
        pending: BytesMut,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let own = match self.stream.local_addr() {
            Ok(reached) => OwnListeners::new(&self.options.listen_addresses, reached),
            Err(error) => return Err(self.fail(error.into()).await),
        };
        let opened = cancellable(
            stop,
            "connect",
            open(self.client_ip, destination, self.options, &own),
        );
        let connecting = std::time::Instant::now();
        let (mut target, bound) = match opened.await {
            Ok(opened) => {
                self.report.connect_time = Some(connecting.elapsed());
                opened
            }
            Err(error @ Error::Cancelled { .. }) => return Err(error),
            Err(error) => return Err(self.fail(error).await),
        };
        self.reply(Reply::Succeeded, Address::Ip(bound)).await?;
        self.relay(&mut target, pending).await
    }

    /// BIND: listen, reply with the listening address, wait for the expected peer, reply with
    /// its address, relay.
    ///
    /// DST.ADDR names the expected peer (RFC 1928 §4). If it is not unspecified, a connection
    /// from any other IP (for a domain: from an IP it does not resolve to) gets the second
    /// reply X'02' and ends the session, as does a peer the rules deny. DST.PORT is not
    /// checked, since the peer's source port is rarely known in advance.
    pub(super) async fn bind(
        &mut self,
        expected: &Address,
        mut pending: BytesMut,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let (listener, expected_ips) =
            match cancellable(stop, "BIND setup", self.listen(expected)).await {
                Ok(ready) => ready,
                Err(error @ Error::Cancelled { .. }) => return Err(error),
                Err(error) => return Err(self.fail(error).await),
            };
        let listening = match listener.local_addr() {
            Ok(address) => address,
            Err(error) => return Err(self.fail(error.into()).await),
        };
        self.reply(Reply::Succeeded, Address::Ip(listening)).await?;
        let waited = cancellable(
            stop,
            "BIND wait",
            self.wait_for_peer(&listener, &mut pending),
        );
        let waited = waited.await;
        drop(listener);
        let (mut peer_stream, peer) = match waited {
            Ok(accepted) => accepted,
            Err(error @ Error::Cancelled { .. }) => return Err(error),
            Err(error) => return Err(self.fail(error).await),
        };
        let peer_ip = peer.ip().to_canonical();
        if let Some(ips) = &expected_ips
            && !ips.contains(&peer_ip)
        {
            let error = Error::UnexpectedPeer {
                expected: expected.clone(),
                actual: peer,
            };
            return Err(self.fail(error).await);
        }
        if self
            .options
            .rules
            .check(self.client_ip, None, peer_ip, peer.port())
            == Action::Deny
        {
            return Err(self
                .fail(Error::Denied {
                    target: Address::Ip(peer),
                })
                .await);
        }
        self.reply(
            Reply::Succeeded,
            Address::Ip(SocketAddr::new(peer_ip, peer.port())),
        )
        .await?;
        self.relay(&mut peer_stream, pending).await
    }

    /// The BIND listener, and the IPs the peer may come from (`None`: any).
    async fn listen(
        &self,
        expected: &Address,
    ) -> Result<(TcpListener, Option<Vec<IpAddr>>), Error> {
        let rules = &self.options.rules;
        let denied = || Error::Denied {
            target: expected.clone(),
        };
        let expected_ips = match expected {
            // RFC 1928 convention: an unspecified DST.ADDR means "any peer"; the peer that
            // comes is judged by the rules, and an unspecified address is never one.
            Address::Ip(address) if address.ip().to_canonical().is_unspecified() => None,
            Address::Ip(address) => {
                let ip = address.ip().to_canonical();
                if rules.check(self.client_ip, None, ip, address.port()) == Action::Deny {
                    return Err(denied());
                }
                Some(vec![ip])
            }
            Address::Domain(host, port) => {
                if rules.check_name(self.client_ip, host, *port) == Some(Action::Deny) {
                    return Err(denied());
                }
                let limit = self.options.connect_timeout;
                let found = timeout(limit, lookup(&*self.options.resolver, host, *port))
                    .await
                    .map_err(|_| Error::ConnectTimeout {
                        target: expected.clone(),
                        limit,
                    })??;
                let allowed: Vec<IpAddr> = found
                    .iter()
                    .filter(|a| {
                        rules.check(self.client_ip, Some(host), a.ip(), a.port()) == Action::Allow
                    })
                    .map(SocketAddr::ip)
                    .collect();
                if allowed.is_empty() {
                    return Err(denied());
                }
                Some(allowed)
            }
        };
        let local_ip = match self.options.outbound_bind {
            Some(ip) => ip,
            None => self.stream.local_addr()?.ip().to_canonical(),
        };
        let socket = if local_ip.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(local_ip, 0))?;
        Ok((socket.listen(1)?, expected_ips))
    }

    /// Waits for one connection, keeping what the client sends meanwhile; the client closing
    /// ends the wait.
    async fn wait_for_peer(
        &mut self,
        listener: &TcpListener,
        pending: &mut BytesMut,
    ) -> Result<(TcpStream, SocketAddr), Error> {
        let limit = self.options.bind_timeout;
        let control = &mut self.stream;
        let work = async {
            loop {
                tokio::select! {
                    accepted = listener.accept() => return accepted.map_err(Error::from),
                    read = control.read_buf(&mut *pending), if pending.len() < MAX_BIND_PENDING_LEN => {
                        if read? == 0 {
                            return Err(Error::Closed { stage: "BIND wait" });
                        }
                    }
                }
            }
        };
        timeout(limit, work)
            .await
            .map_err(|_| Error::BindTimeout { limit })?
    }

    /// Relays between the client and `target`, and counts.
    async fn relay(&mut self, target: &mut TcpStream, pending: BytesMut) -> Result<(), Error> {
        for stream in [&self.stream, &*target] {
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%error, "cannot set TCP_NODELAY");
            }
        }
        let options = self.options;
        let relayed = relay::relay(
            &mut self.stream,
            target,
            pending,
            options.relay_buffer_len,
            options.idle_timeout,
        )
        .await;
        self.report.bytes_up += relayed.up;
        self.report.bytes_down += relayed.down;
        relayed.result
    }
}

/// Resolves (if needed) and connects, trying each allowed address in turn, all within
/// `connect_timeout`. Returns the stream and its local address.
async fn open(
    client_ip: IpAddr,
    destination: &Address,
    options: &ServerOptions,
    own: &OwnListeners,
) -> Result<(TcpStream, SocketAddr), Error> {
    let limit = options.connect_timeout;
    let rules = &options.rules;
    let denied = || Error::Denied {
        target: destination.clone(),
    };
    let work = async {
        match destination {
            Address::Ip(address) => {
                let address = SocketAddr::new(address.ip().to_canonical(), address.port());
                if rules.check(client_ip, None, address.ip(), address.port()) == Action::Deny {
                    return Err(denied());
                }
                connect_one(address, options.outbound_bind, own).await
            }
            Address::Domain(host, port) => {
                if rules.check_name(client_ip, host, *port) == Some(Action::Deny) {
                    return Err(denied());
                }
                let mut last_failure = None;
                for address in lookup(&*options.resolver, host, *port).await? {
                    if rules.check(client_ip, Some(host), address.ip(), address.port())
                        == Action::Deny
                    {
                        debug!(%host, %address, "rules deny this address of the name");
                        continue;
                    }
                    match connect_one(address, options.outbound_bind, own).await {
                        Ok(stream) => return Ok(stream),
                        Err(error) => {
                            debug!(%host, %error, "connect attempt failed");
                            last_failure = Some(error);
                        }
                    }
                }
                Err(last_failure.unwrap_or_else(denied))
            }
        }
    };
    timeout(limit, work)
        .await
        .map_err(|_| Error::ConnectTimeout {
            target: destination.clone(),
            limit,
        })?
}

/// Connects to `address` unless it is, or turns out to be, one of the server's own listeners.
/// Returns the stream and its local address.
async fn connect_one(
    address: SocketAddr,
    bind: Option<IpAddr>,
    own: &OwnListeners,
) -> Result<(TcpStream, SocketAddr), Error> {
    if own.reached_by(address, None)
        || (own.wildcard_on(address.port()) && is_local_address(address.ip()))
    {
        return Err(Error::OwnAddress { address });
    }
    let attempt = async {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(address).await
    };
    let stream = attempt
        .await
        .map_err(|error| Error::Connect { address, error })?;
    let local = stream.local_addr()?;
    // A connection reaches the address it was asked for, except the unspecified address (and,
    // to be safe, the rest of 0.0.0.0/8), which the kernel turns into a local one: only then is
    // the peer worth a getpeername(2).
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
    if own.reached_by(reached, Some(local.ip())) {
        drop(stream);
        return Err(Error::OwnAddress { address: reached });
    }
    Ok((stream, local))
}

/// Whether `ip` is an address of this host. The kernel routes a local address through the
/// local table, whose preferred source is the address itself: an unbound UDP socket connected
/// to it (which sends nothing) takes `ip` as its own address. This holds whatever
/// `outbound_bind` says, unlike the source of the TCP connection itself.
fn is_local_address(ip: IpAddr) -> bool {
    let any = match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let Ok(probe) = std::net::UdpSocket::bind(SocketAddr::new(any, 0)) else {
        return false;
    };
    probe.connect(SocketAddr::new(ip, 9)).is_ok()
        && probe
            .local_addr()
            .is_ok_and(|local| local.ip().to_canonical() == ip.to_canonical())
}

/// The server's own listening addresses, for refusing a CONNECT that loops back into it.
#[derive(Debug)]
pub(crate) struct OwnListeners(Vec<SocketAddr>);

impl OwnListeners {
    /// `configured` (see [`ServerOptions::listen_addresses`]; port 0 means the port of
    /// `reached`) and `reached`, the local address of the client's connection. IPs canonical.
    pub(crate) fn new(configured: &[SocketAddr], reached: SocketAddr) -> OwnListeners {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let mut own = vec![canonical(reached)];
        for &address in configured {
            let port = if address.port() == 0 {
                reached.port()
            } else {
                address.port()
            };
            own.push(canonical(SocketAddr::new(address.ip(), port)));
        }
        OwnListeners(own)
    }

    /// Whether a listener on an unspecified address has `port`: then any local address with
    /// that port reaches it.
    pub(crate) fn wildcard_on(&self, port: u16) -> bool {
        self.0
            .iter()
            .any(|own| own.port() == port && own.ip().is_unspecified())
    }

    /// Whether a connection to `destination` (from `source`, once connected) reaches one of
    /// the listeners. For a listener on an unspecified address: a destination with its port
    /// that is a loopback address, or equal to `source` (on Linux, a connection to any local
    /// address has that address as its source) or to the listener address the client reached.
    pub(crate) fn reached_by(&self, destination: SocketAddr, source: Option<IpAddr>) -> bool {
        let ip = destination.ip().to_canonical();
        let local = source.map(|ip| ip.to_canonical());
        let Some(reached) = self.0.first() else {
            return false;
        };
        self.0.iter().any(|own| {
            own.port() == destination.port()
                && if own.ip().is_unspecified() {
                    ip.is_loopback() || local == Some(ip) || ip == reached.ip()
                } else {
                    own.ip() == ip
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SocketAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn own_listeners_are_recognised_however_reached() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("valid IP");
        let specific = OwnListeners::new(&[at("192.0.2.7:1080")], at("192.0.2.7:1080"));
        let wildcard = OwnListeners::new(&[at("0.0.0.0:1080")], at("192.0.2.7:1080"));
        let v6_wildcard = OwnListeners::new(&[at("[::]:0")], at("[::ffff:192.0.2.7]:1080"));
        let table = [
            (&specific, "192.0.2.7:1080", None, true),
            (&specific, "[::ffff:192.0.2.7]:1080", None, true),
            (&specific, "127.0.0.1:1080", None, false),
            (&specific, "192.0.2.7:1081", None, false),
            (&wildcard, "127.0.0.1:1080", None, true),
            (&wildcard, "127.3.2.1:1080", None, true),
            (&wildcard, "[::1]:1080", None, true),
            (&wildcard, "192.0.2.7:1080", None, true),
            (&wildcard, "198.51.100.1:1080", None, false),
            (
                &wildcard,
                "198.51.100.1:1080",
                Some(ip("198.51.100.1")),
                true,
            ),
            (&wildcard, "198.51.100.1:1080", Some(ip("192.0.2.7")), false),
            (&wildcard, "127.0.0.1:1081", None, false),
            (&v6_wildcard, "127.0.0.1:1080", None, true),
            (&v6_wildcard, "192.0.2.7:1080", None, true),
            (
                &v6_wildcard,
                "[2001:db8::1]:1080",
                Some(ip("2001:db8::1")),
                true,
            ),
            (
                &v6_wildcard,
                "[2001:db8::1]:1080",
                Some(ip("2001:db8::2")),
                false,
            ),
        ];
        for (own, destination, source, expected) in table {
            assert_eq!(
                own.reached_by(at(destination), source),
                expected,
                "{own:?} {destination} from {source:?}"
            );
        }
    }
}
