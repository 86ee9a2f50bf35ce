//! Leaving through an upstream proxy (`via`): the TCP connection to it through the
//! [`super::Connector`], then SOCKS5 CONNECT (this crate's client) or HTTP CONNECT (hyper's
//! client), after which the stream carries the destination's bytes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HOST, HeaderValue, PROXY_AUTHORIZATION};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use super::{Opened, Outbound, ProxyStream};
use crate::options::ServerOptions;
use crate::resolve::lookup;
use crate::via::{Upstream, UpstreamKind};
use crate::wire::Address;
use crate::{Error, client};

/// Opens `destination` through `upstream`. The caller bounds it with `connect_timeout`.
///
/// # Errors
///
/// [`Error::Upstream`] wrapping why (the upstream could not be reached, refused the login or
/// the request), or [`Error::UpstreamStatus`] for an HTTP upstream's refusal.
pub(crate) async fn open(
    upstream: &Upstream,
    destination: &Address,
    options: &ServerOptions,
) -> Result<Opened, Error> {
    let name = upstream.to_string();
    let opened = through(upstream, destination, options, &name).await;
    match &opened {
        Ok(_) => debug!(upstream = %name, %destination, "connected through the upstream"),
        // The operator's configuration is wrong, not the client's request.
        Err(error) if login_refused(error) => {
            warn!(upstream = %name, %error, "the upstream proxy refused our login");
        }
        Err(error) => debug!(%error, "the upstream failed the request"),
    }
    opened
}

/// [`open`] without the log.
async fn through(
    upstream: &Upstream,
    destination: &Address,
    options: &ServerOptions,
    name: &str,
) -> Result<Opened, Error> {
    let stream = match reach(upstream, options).await {
        Ok(stream) => stream,
        Err(error) => return Err(wrapped(name, error)),
    };
    match (upstream.kind, stream) {
        (UpstreamKind::Socks5, stream) => match socks5(stream, upstream, destination).await {
            Ok(opened) => Ok(opened),
            Err(error) => Err(wrapped(name, error)),
        },
        (UpstreamKind::Http, Outbound::Tcp(tcp)) => {
            let (tcp, early) = http(tcp, upstream, destination, name).await?;
            Ok(Opened {
                stream: Outbound::Tcp(tcp),
                early,
                via: Some(upstream.clone()),
                local: None,
            })
        }
        (UpstreamKind::Http, Outbound::Stream(other)) => {
            let (other, early) = http(other, upstream, destination, name).await?;
            Ok(Opened {
                stream: Outbound::Stream(other),
                early,
                via: Some(upstream.clone()),
                local: None,
            })
        }
    }
}

fn wrapped(name: &str, error: Error) -> Error {
    Error::Upstream {
        upstream: name.to_owned(),
        error: Box::new(error),
    }
}

/// Whether the upstream refused our login (or wants one we did not send).
fn login_refused(error: &Error) -> bool {
    match error {
        Error::UpstreamStatus { status, .. } => *status == 407,
        Error::Upstream { error, .. } => {
            matches!(**error, Error::AuthFailed | Error::NoAcceptableMethod)
        }
        _ => false,
    }
}

/// The TCP connection to the upstream: its address (resolved by the server's resolver when
/// it is a name), tried in order, through the connector.
async fn reach(upstream: &Upstream, options: &ServerOptions) -> Result<Outbound, Error> {
    let addresses = match upstream.ip() {
        Some(ip) => vec![SocketAddr::new(ip, upstream.port)],
        None => lookup(&*options.resolver, &upstream.host, upstream.port).await?,
    };
    let mut last_failure = None;
    for address in addresses {
        match options
            .connector
            .connect(address, options.outbound_bind)
            .await
        {
            Ok(stream) => return Ok(stream),
            Err(error) => last_failure = Some(Error::Connect { address, error }),
        }
    }
    Err(last_failure.unwrap_or_else(|| Error::Io(io::ErrorKind::NotFound.into())))
}

/// SOCKS5 CONNECT over the connection to the upstream.
async fn socks5(
    mut stream: Outbound,
    upstream: &Upstream,
    destination: &Address,
) -> Result<Opened, Error> {
    let credentials = upstream
        .credentials
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_str()));
    // The caller's connect_timeout bounds the whole: a deadline of the handshake's own would
    // race it and turn a silent upstream into X'01' instead of the timeout's X'04'.
    let limit = Duration::MAX;
    match &mut stream {
        Outbound::Tcp(tcp) => {
            tcp.set_nodelay(true)?;
            client::connect_over(tcp, destination, credentials, limit).await?;
        }
        Outbound::Stream(other) => {
            client::connect_over(other, destination, credentials, limit).await?;
        }
    }
    Ok(Opened {
        stream,
        early: Bytes::new(),
        via: Some(upstream.clone()),
        local: None,
    })
}

/// The future of [`http`].
type HttpFuture<'a, T> = Pin<Box<dyn Future<Output = Result<(T, Bytes), Error>> + Send + 'a>>;

/// HTTP CONNECT over `io` with hyper's client; returns the stream and the bytes the
/// destination already sent that hyper read past the response head. (Boxed: the compiler
/// cannot otherwise prove the callers' futures `Send` through hyper's bounds.)
fn http<'a, T>(
    io: T,
    upstream: &'a Upstream,
    destination: &'a Address,
    name: &'a str,
) -> HttpFuture<'a, T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(http_connect(io, upstream, destination, name))
}

async fn http_connect<T>(
    io: T,
    upstream: &Upstream,
    destination: &Address,
    name: &str,
) -> Result<(T, Bytes), Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |error: hyper::Error| Error::Upstream {
        upstream: name.to_owned(),
        error: Box::new(Error::Io(io::Error::other(error))),
    };
    let authority = match destination {
        Address::Ip(address) => address.to_string(),
        Address::Domain(host, port) => format!("{host}:{port}"),
    };
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|error| Error::Io(io::Error::other(error)))?;
    let host =
        HeaderValue::from_str(&authority).map_err(|error| Error::Io(io::Error::other(error)))?;
    request.headers_mut().insert(HOST, host);
    if let Some((user, password)) = &upstream.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let value = HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|error| Error::Io(io::Error::other(error)))?;
        request.headers_mut().insert(PROXY_AUTHORIZATION, value);
    }
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(failed)?;
    // The connection must be driven while the request waits for its response; it ends by
    // itself once it hands the socket over to the upgrade (after a 2xx to CONNECT), which may
    // come before the response future is polled again.
    let mut connection = connection.with_upgrades();
    let sent = sender.send_request(request);
    tokio::pin!(sent);
    let mut ended = None;
    let response = loop {
        tokio::select! {
            response = &mut sent => break response.map_err(failed)?,
            done = &mut connection, if ended.is_none() => ended = Some(done),
        }
    };
    let status = response.status();
    if !status.is_success() {
        return Err(Error::UpstreamStatus {
            upstream: name.to_owned(),
            status: status.as_u16(),
        });
    }
    let upgraded = match ended {
        Some(done) => {
            done.map_err(failed)?;
            hyper::upgrade::on(response).await
        }
        None => {
            let (upgraded, done) = tokio::join!(hyper::upgrade::on(response), connection);
            done.map_err(failed)?;
            upgraded
        }
    };
    let upgraded = upgraded.map_err(failed)?;
    let parts = upgraded
        .downcast::<TokioIo<T>>()
        .map_err(|_| Error::Io(io::Error::other("hyper gave back another stream")))?;
    Ok((parts.io.into_inner(), parts.read_buf))
}

/// The `Box<dyn ProxyStream>` of [`Outbound::Stream`] is a stream hyper can use.
const _: fn() = || {
    fn usable<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>() {}
    usable::<Box<dyn ProxyStream>>();
};
