//! CONNECT and BIND (RFC 1928 §4, §6); UDP ASSOCIATE lives in [`udp`].

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::{Session, cancellable};
use crate::Error;
use crate::core::{self, Judged, Opened, Outbound};
use crate::rules::{Action, Requester};
use crate::wire::{Address, Reply};

/// While BIND waits for its peer, at most this much of what the client sends is kept (to be
/// relayed first); beyond it the client is simply not read until the peer arrives.
const MAX_BIND_PENDING_LEN: usize = 64 * 1024;

impl<S> Session<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// CONNECT: open the target through the proxy core, reply with the outbound socket's
    /// address, relay.
    pub(super) async fn connect(
        &mut self,
        destination: &Address,
        pending: BytesMut,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let request = core::Request::new(self.client_ip, destination)
            .user(self.report.user.as_deref())
            .reached(self.local);
        let opened = cancellable(stop, "connect", core::open(self.options, &request));
        let connecting = std::time::Instant::now();
        let target = match opened.await {
            Ok(target) => {
                self.report.connect_time = Some(connecting.elapsed());
                self.report.via.clone_from(&target.via);
                target
            }
            Err(error @ Error::Cancelled { .. }) => return Err(error),
            Err(error) => return Err(self.fail(error).await),
        };
        // A stream that is not a TCP socket has no address to report: BND is unspecified.
        let bound = target.local_addr().ok();
        let bound = bound.map_or(Address::UNSPECIFIED, Address::Ip);
        self.reply(Reply::Succeeded, bound).await?;
        self.relay(target, pending).await
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
        let (peer_stream, peer) = match waited {
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
        let requester = Requester::new(self.client_ip, self.report.user.as_deref());
        if self
            .options
            .rules
            .check(requester, None, peer_ip, peer.port())
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
        let opened = Opened {
            stream: Outbound::Tcp(peer_stream),
            early: Bytes::new(),
            via: None,
            local: None,
        };
        self.relay(opened, pending).await
    }

    /// The BIND listener, and the IPs the peer may come from (`None`: any).
    async fn listen(
        &self,
        expected: &Address,
    ) -> Result<(TcpListener, Option<Vec<IpAddr>>), Error> {
        let expected_ips = match expected {
            // RFC 1928 convention: an unspecified DST.ADDR means "any peer"; the peer that
            // comes is judged by the rules, and an unspecified address is never one.
            Address::Ip(address) if address.ip().to_canonical().is_unspecified() => None,
            // Judged as CONNECT judges, but never chained: the peer connects to us.
            _ => {
                let limit = self.options.connect_timeout;
                let requester = Requester::new(self.client_ip, self.report.user.as_deref());
                let judging = core::judge(self.options, requester, expected, false);
                let judged =
                    timeout(limit, judging)
                        .await
                        .map_err(|_| Error::ConnectTimeout {
                            target: expected.clone(),
                            limit,
                        })??;
                match judged {
                    Judged::Addresses(allowed) => {
                        Some(allowed.iter().map(|(address, _)| address.ip()).collect())
                    }
                    // Not asked for: `chain` is off.
                    Judged::Upstream(_) => {
                        return Err(Error::Denied {
                            target: expected.clone(),
                        });
                    }
                }
            }
        };
        let local_ip = match (self.options.outbound_bind, self.local) {
            (Some(ip), _) => ip,
            (None, Some(local)) => local.ip().to_canonical(),
            (None, None) => return Err(Error::Io(no_local_address())),
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
    async fn relay(&mut self, target: Opened, pending: BytesMut) -> Result<(), Error> {
        let relayed = core::relay(&mut self.stream, target, pending, self.options).await;
        self.report.bytes_up += relayed.up;
        self.report.bytes_down += relayed.down;
        relayed.result
    }
}

/// BIND and UDP ASSOCIATE bind a socket to the local IP of the client's connection: a session
/// over a stream that is not a TCP socket has none (unless `outbound_bind` names one).
pub(crate) fn no_local_address() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the client's stream is not a TCP socket and outbound_bind is not set",
    )
}
