//! SOCKS4 and SOCKS4a sessions: the request read with [`crate::wire::socks4`], then CONNECT
//! and BIND exactly as SOCKS5 carries them out (the proxy core: rules, resolving, Happy
//! Eyeballs, `via`, the relay), answered with SOCKS4's two codes: 90 (granted) and 91
//! (rejected or failed). 92 and 93 (identd) are never sent: no one runs identd now.
//!
//! SOCKS4 carries no password. On a server whose [`crate::Authenticator`] would make this
//! client log in (it does not select X'00' when that is all a client offers), the request is
//! answered 91 and the connection closed, with a warn line: SOCKS4 must not become a way
//! around the SOCKS5 login. The user id a SOCKS4 client sends is a claim, never a login: it
//! is logged (escaped) at debug level, and the rules never see it as a user.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{ServerOptions, Session, SessionReport, serve_as};
use crate::Error;
use crate::framing::{Deadline, read_msg};
use crate::wire::protocol::Protocol;
use crate::wire::socks4::{self, ReplyCode};
use crate::wire::{Address, Command, Method, Reply, Request};

/// Runs one SOCKS4 or SOCKS4a session on an accepted connection until it ends, and reports on
/// it, as [`crate::serve`] does for SOCKS5 (same options, same rules, same relay; the report's
/// `protocol` is [`Protocol::Socks4`]).
///
/// CONNECT and BIND are served when [`ServerOptions::commands`] enables them; every failure
/// is answered 91 and the connection closed. A BIND reply carries an IPv4 address; when the
/// listening address is IPv6 it carries `0.0.0.0`, which tells the client to use the proxy's
/// own address (SOCKS4 text).
pub async fn serve_socks4<S>(
    stream: S,
    peer: SocketAddr,
    options: &ServerOptions,
    stop: CancellationToken,
) -> SessionReport
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_as(Protocol::Socks4, stream, peer, options, stop).await
}

impl<S> Session<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Reads the request within `handshake_timeout`, and refuses it if this client would have
    /// to log in.
    pub(super) async fn socks4_handshake(&mut self, buf: &mut BytesMut) -> Result<Request, Error> {
        let deadline = Deadline::after(self.options.handshake_timeout);
        let request = read_msg(&mut self.stream, buf, "request", deadline, |bytes| {
            socks4::decode_request(bytes).map_err(Error::from)
        })
        .await?;
        let user_id = String::from_utf8_lossy(&request.user_id);
        let client = self.report.client;
        debug!(%client, user_id = ?user_id, socks4a = request.is_socks4a(), "SOCKS4 request");
        let command = match request.command {
            socks4::Command::Connect => Command::Connect,
            socks4::Command::Bind => Command::Bind,
        };
        if self.options.auth.choose(self.client_ip, &[Method::NoAuth]) != Method::NoAuth {
            self.report.command = Some(command);
            self.report.destination = Some(request.destination.clone());
            let client = SocketAddr::new(client.ip().to_canonical(), client.port());
            warn!(
                %client,
                user_id = ?user_id,
                "SOCKS4 request refused: this listener requires a password, which SOCKS4 cannot \
                 send, and the client is not in no_auth_networks"
            );
            return Err(Error::Socks4NeedsPassword);
        }
        Ok(Request {
            command,
            destination: request.destination,
        })
    }
}

/// Writes the SOCKS4 reply for `reply` (90 for success, 91 for anything else) carrying
/// `bound` if it is an IPv4 address (IPv4-mapped included), else `0.0.0.0:0`.
pub(super) fn encode(reply: Reply, bound: &Address, out: &mut Vec<u8>) {
    let code = if reply == Reply::Succeeded {
        ReplyCode::Granted
    } else {
        ReplyCode::Rejected
    };
    let address = match bound {
        Address::Ip(address) => match address.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => SocketAddrV4::new(ip, address.port()),
            std::net::IpAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        },
        Address::Domain(..) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    };
    socks4::encode_reply(&socks4::Reply { code, address }, out);
}
