//! The PROXY protocol in front of a listener (`proxy_protocol`, `proxy_protocol_from`,
//! `proxy_protocol_timeout`): whom to trust for a header, and reading exactly the header off
//! a connection so that the bytes after it stay for the mode. The header format itself lives
//! in the `proxy-header` crate.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use proxy_header::{Decoded, Header, MAX_V2_LEN, Versions, decode};
use serde::Deserialize;
use tokio::{io::AsyncReadExt, net::TcpStream, time::timeout};

use crate::bounds::{MAX_DURATION, MIN_TIMEOUT, check_duration, invalid};

/// `proxy_protocol = "off" | "v1" | "v2" | "any"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header: the TCP peer is the client.
    #[default]
    Off,
    /// Every connection starts with a version 1 (text) header.
    V1,
    /// Every connection starts with a version 2 (binary) header.
    V2,
    /// Every connection starts with a header of either version.
    Any,
}

/// The default `proxy_protocol_timeout`.
pub(crate) fn default_timeout() -> Duration {
    Duration::from_secs(3)
}

/// Bytes asked of the kernel per peek: more than a version 1 header, and a version 2 header
/// with its addresses and a few TLVs.
const PEEK_LEN: usize = 512;

/// The PROXY protocol settings of a listener that has it on.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    versions: Versions,
    from: Vec<IpNet>,
    /// The whole header must arrive within this of the accept.
    pub timeout: Duration,
}

impl ProxySettings {
    /// The settings for the three keys, or `None` when `mode` is off.
    pub(crate) fn new(mode: ProxyProtocol, from: &[IpNet], timeout: Duration) -> Option<Self> {
        let versions = match mode {
            ProxyProtocol::Off => return None,
            ProxyProtocol::V1 => Versions::V1,
            ProxyProtocol::V2 => Versions::V2,
            ProxyProtocol::Any => Versions::Any,
        };
        Some(Self {
            versions,
            from: from.to_vec(),
            timeout,
        })
    }

    /// Checks the three keys together.
    pub(crate) fn validate(
        mode: ProxyProtocol,
        from: &[IpNet],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        check_duration("proxy_protocol_timeout", timeout, MIN_TIMEOUT, MAX_DURATION)?;
        match (mode, from.is_empty()) {
            (ProxyProtocol::Off, false) => Err(invalid(
                "proxy_protocol_from",
                "has no effect while proxy_protocol is \"off\" (set proxy_protocol to \"v1\", \"v2\" or \"any\", or remove it)",
            )),
            (ProxyProtocol::Off, true) | (_, false) => Ok(()),
            (_, true) => Err(invalid(
                "proxy_protocol_from",
                "is required when proxy_protocol is on: the CIDRs of the balancers that send the header, e.g. [\"10.0.0.5/32\"]",
            )),
        }
    }

    /// Whether a connection from `ip` may send a header.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|net| net.contains(&ip))
    }
}

/// Why a connection's header was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("peer closed the connection during the PROXY protocol header")]
    Closed,
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Invalid(#[from] proxy_header::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the header at the start of `stream` within the deadline, taking exactly its bytes
/// off the socket: each step peeks at what has arrived, and reads only bytes the decoder has
/// placed inside the header, so whatever follows the header (a SOCKS5 greeting sent in the
/// same segment, say) stays in the socket for the mode. Returns the client: the header's
/// source, or `peer` for `LOCAL` and addresses the header does not give.
pub(crate) async fn read_client(
    stream: &mut TcpStream,
    peer: SocketAddr,
    settings: &ProxySettings,
) -> Result<(SocketAddr, Header), HeaderError> {
    let work = async {
        // The header bytes taken so far: at most MAX_V2_LEN + PEEK_LEN, since the decoder
        // refuses anything longer.
        let mut header: Vec<u8> = Vec::new();
        let mut peeked = [0u8; PEEK_LEN];
        loop {
            // Every byte peeked before was taken, so this waits for new bytes.
            let n = stream.peek(&mut peeked).await?;
            let Some(fresh) = peeked.get(..n).filter(|fresh| !fresh.is_empty()) else {
                return Err(HeaderError::Closed);
            };
            let taken = header.len();
            header.extend_from_slice(fresh);
            let take = match decode(&header, settings.versions)? {
                Decoded::Done(decoded, used) => {
                    // `used > taken`: the bytes taken before were not a whole header.
                    let rest = used.saturating_sub(taken).min(n);
                    stream.read_exact(&mut peeked[..rest]).await?;
                    let client = decoded.source().unwrap_or(peer);
                    return Ok((client, decoded));
                }
                // All of it belongs to the header.
                Decoded::NeedMore(_) => n,
            };
            debug_assert!(header.len() <= MAX_V2_LEN + PEEK_LEN);
            stream.read_exact(&mut peeked[..take]).await?;
        }
    };
    timeout(settings.timeout, work)
        .await
        .map_err(|_| HeaderError::Timeout(settings.timeout))?
}
