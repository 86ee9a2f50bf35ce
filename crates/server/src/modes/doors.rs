//! The front doors of a proxy listener: SOCKS5, SOCKS4/4a and HTTP, all through the socks5
//! crate's proxy core (the same rules, users, `no_auth_networks`, resolving, Happy Eyeballs
//! and `via`). A `socks5` listener with several `protocols` looks at the first bytes of each
//! connection to pick the door; an `http` listener always opens the HTTP one.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http_proxy::{BoxedStream, DialError, DialFuture, Dialer, Target};
use serde::Deserialize;
use socks5::wire::protocol::{Detected, MAX_DETECT_LEN, Protocol, detect};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A protocol name in `protocols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolName {
    /// SOCKS5 (RFC 1928, RFC 1929).
    Socks5,
    /// SOCKS4 and SOCKS4a.
    Socks4,
    /// HTTP/1.1 proxy requests: CONNECT and absolute-form `http://`.
    Http,
}

impl ProtocolName {
    /// The name as the config and the logs write it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Socks5 => "socks5",
            Self::Socks4 => "socks4",
            Self::Http => "http",
        }
    }

    /// The index in [`crate::stats::PROTOCOLS`].
    #[must_use]
    pub fn index(self) -> usize {
        match self {
            Self::Socks5 => 0,
            Self::Socks4 => 1,
            Self::Http => 2,
        }
    }

    /// The name of a protocol [`detect`] recognised, if it is one a listener can serve.
    #[must_use]
    pub fn of(protocol: Protocol) -> Option<Self> {
        match protocol {
            Protocol::Socks5 => Some(Self::Socks5),
            Protocol::Socks4 => Some(Self::Socks4),
            Protocol::Http => Some(Self::Http),
            _ => None,
        }
    }
}

/// The default `protocols`: SOCKS5 only.
pub(crate) fn default_protocols() -> Vec<ProtocolName> {
    vec![ProtocolName::Socks5]
}

/// Why no door was chosen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoDoor {
    /// The client closed before its first bytes decided.
    #[error("the client closed before its first bytes")]
    Closed,
    /// Reading them failed.
    #[error("reading the first bytes: {0}")]
    Io(io::Error),
    /// They did not arrive within the handshake timeout.
    #[error("no first bytes within handshake_timeout")]
    Timeout,
}

/// Reads the first bytes of `stream` until [`detect`] decides, within `limit`. SOCKS is decided
/// by its first byte, which is only peeked: the stream goes on untouched, so the SOCKS session
/// reads it itself and its relay keeps splice(2). Anything else is read (at most
/// [`MAX_DETECT_LEN`] bytes, never past what `detect` asks for) and returned, for the door to
/// read first ([`Prefixed`]).
pub(crate) async fn choose(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<(Protocol, Bytes), NoDoor> {
    let work = async {
        let mut first = [0_u8; 1];
        if stream.peek(&mut first).await.map_err(NoDoor::Io)? == 0 {
            return Err(NoDoor::Closed);
        }
        if let Detected::Protocol(protocol @ (Protocol::Socks5 | Protocol::Socks4)) = detect(&first)
        {
            return Ok((protocol, Bytes::new()));
        }
        let mut read = BytesMut::with_capacity(MAX_DETECT_LEN);
        loop {
            match detect(&read) {
                Detected::Protocol(protocol) => return Ok((protocol, read.freeze())),
                Detected::NeedMore(more) => {
                    let mut chunk = [0_u8; MAX_DETECT_LEN];
                    let want = more.min(MAX_DETECT_LEN.saturating_sub(read.len())).max(1);
                    let chunk = chunk.get_mut(..want).unwrap_or_default();
                    let n = stream.read(chunk).await.map_err(NoDoor::Io)?;
                    if n == 0 {
                        return Err(NoDoor::Closed);
                    }
                    read.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| NoDoor::Timeout)?
}

/// A stream with bytes already read from it in front: reads give `prefix` first, then the
/// stream; writes go to the stream.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() && buf.remaining() > 0 {
            let n = self.prefix.len().min(buf.remaining());
            let prefix = self.prefix.split_to(n);
            buf.put_slice(prefix.chunk());
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The HTTP door's way out: the socks5 crate's proxy core for one client connection (its IP
/// and the listener address it reached), so that HTTP requests are judged, resolved, chained
/// and refused exactly as SOCKS ones.
pub(crate) struct CoreDialer {
    pub(crate) options: Arc<socks5::ServerOptions>,
    pub(crate) client: IpAddr,
    pub(crate) reached: Option<SocketAddr>,
}

impl Dialer for CoreDialer {
    fn dial<'a>(&'a self, target: &'a Target, user: Option<&'a str>) -> DialFuture<'a> {
        Box::pin(async move {
            let request = socks5::core::Request::new(self.client, target)
                .user(user)
                .reached(self.reached);
            let opened = socks5::core::open(&self.options, &request)
                .await
                .map_err(|error| DialError::from_socks5(target, error))?;
            let early = opened.early;
            let stream: BoxedStream = match opened.stream {
                socks5::Outbound::Tcp(stream) => Box::new(Prefixed::new(early, stream)),
                socks5::Outbound::Stream(stream) => Box::new(Prefixed::new(early, stream)),
            };
            Ok(stream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_prefixed_stream_reads_the_prefix_first() {
        let (mut near, far) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut near, b" world")
            .await
            .unwrap();
        drop(near);
        let mut stream = Prefixed::new(Bytes::from_static(b"hello"), far);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
