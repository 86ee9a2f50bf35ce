//! The mode registry: every mode is one variant of [`ListenerConfig`] (so
//! serde rejects an unknown mode and lists the valid names), one entry in
//! [`MODES`] (shown by `server --help`) and one arm in each `match` below.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use ipnet::IpNet;

use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    config::invalid,
    modes::{crc_tcp, socks5},
    proxy_protocol::{ProxyProtocol, ProxySettings},
    stats::ListenerStats,
};

/// The registered modes and what each does, for `--help`.
pub const MODES: &[(&str, &str)] = &[
    (
        "crc-tcp",
        "receives CRC-checked frames (docs/PROTOCOL.md), hands them to a handler, acks each",
    ),
    (
        "socks5",
        "a SOCKS5 proxy (RFC 1928: CONNECT, BIND, UDP ASSOCIATE; RFC 1929 passwords)",
    ),
];

/// One `[[listener]]` table, tagged by its `mode` key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum ListenerConfig {
    /// `mode = "crc-tcp"`.
    CrcTcp(crc_tcp::CrcTcpConfig),
    /// `mode = "socks5"`.
    Socks5(socks5::Socks5Config),
}

/// What every listener has, whatever its mode.
#[derive(Debug, Clone)]
pub struct Common {
    /// The listener's name in logs.
    pub name: String,
    /// The address to listen on.
    pub bind: SocketAddr,
    /// Connections served at once; the next waits in the accept queue.
    pub max_connections: usize,
    /// Connections served at once from one client IP address; one more is
    /// closed at once (`None`: no limit).
    pub max_connections_per_ip: Option<usize>,
    /// Whether to set `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// The PROXY protocol settings, when it is on.
    pub proxy_protocol: Option<ProxySettings>,
    /// The listener's counters, shared with its service.
    pub stats: Arc<ListenerStats>,
}

impl ListenerConfig {
    /// The mode's registered name.
    #[must_use]
    pub fn mode(&self) -> &'static str {
        match self {
            Self::CrcTcp(_) => "crc-tcp",
            Self::Socks5(_) => "socks5",
        }
    }

    /// The listener's name: its `name` key, or `MODE[INDEX]`.
    #[must_use]
    pub fn name(&self, index: usize) -> String {
        let name = match self {
            Self::CrcTcp(c) => c.name.clone(),
            Self::Socks5(c) => c.name.clone(),
        };
        name.unwrap_or_else(|| format!("{}[{index}]", self.mode()))
    }

    /// The address to listen on.
    #[must_use]
    pub fn bind(&self) -> SocketAddr {
        match self {
            Self::CrcTcp(c) => c.bind,
            Self::Socks5(c) => c.bind,
        }
    }

    /// The `max_connections_per_ip` key, which every mode has.
    #[must_use]
    pub fn max_connections_per_ip(&self) -> Option<usize> {
        match self {
            Self::CrcTcp(c) => c.max_connections_per_ip,
            Self::Socks5(c) => c.max_connections_per_ip,
        }
    }

    /// The `proxy_protocol`, `proxy_protocol_from` and `proxy_protocol_timeout` keys, which
    /// every mode has.
    #[must_use]
    pub fn proxy_protocol(&self) -> (ProxyProtocol, &[IpNet], Duration) {
        match self {
            Self::CrcTcp(c) => (
                c.proxy_protocol,
                &c.proxy_protocol_from,
                c.proxy_protocol_timeout,
            ),
            Self::Socks5(c) => (
                c.proxy_protocol,
                &c.proxy_protocol_from,
                c.proxy_protocol_timeout,
            ),
        }
    }

    /// The file a sink of this listener writes, if any.
    #[must_use]
    pub fn sink_path(&self) -> Option<&Path> {
        match self {
            Self::CrcTcp(c) => c.sink_path(),
            Self::Socks5(_) => None,
        }
    }

    /// The address a proxy listener binds, which no proxy listener may connect to; `None`
    /// for other modes.
    pub(crate) fn proxy_bind(&self) -> Option<SocketAddr> {
        match self {
            Self::Socks5(c) => Some(c.bind),
            Self::CrcTcp(_) => None,
        }
    }

    /// Checks the mode's own settings.
    ///
    /// # Errors
    ///
    /// An error naming the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.max_connections_per_ip() {
            Some(0) => {
                return Err(invalid(
                    "max_connections_per_ip",
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            Some(limit) => crate::config::check_count(
                "max_connections_per_ip",
                limit as u64,
                1,
                crate::config::MAX_CONNECTIONS as u64,
                "",
            )?,
            None => {}
        }
        let (mode, from, timeout) = self.proxy_protocol();
        ProxySettings::validate(mode, from, timeout)?;
        match self {
            Self::CrcTcp(c) => c.validate(),
            Self::Socks5(c) => c.validate(),
        }
    }

    /// Builds the running service: opens files, builds options, and
    /// returns the settings common to every listener.
    ///
    /// # Errors
    ///
    /// When a resource the mode needs cannot be had (a sink's file, say).
    ///
    /// `proxies` are the bind addresses of every proxy listener of the config, which a
    /// proxy listener refuses to connect to (a loop through two listeners is still a loop).
    pub(crate) async fn build(
        &self,
        index: usize,
        proxies: &[SocketAddr],
    ) -> anyhow::Result<(Common, Service)> {
        let name = self.name(index);
        let stats = Arc::new(ListenerStats::default());
        Ok(match self {
            Self::CrcTcp(c) => (
                c.common(name.clone(), Arc::clone(&stats)),
                Service::CrcTcp(Arc::new(crc_tcp::CrcTcp::new(c, &name, stats).await?)),
            ),
            Self::Socks5(c) => (
                c.common(name, Arc::clone(&stats))?,
                Service::Socks5(Arc::new(socks5::Socks5::new(c, stats, proxies)?)),
            ),
        })
    }
}

/// A running mode, shared by the connections of one listener.
#[derive(Clone)]
pub(crate) enum Service {
    CrcTcp(Arc<crc_tcp::CrcTcp>),
    Socks5(Arc<socks5::Socks5>),
}

impl Service {
    /// Serves one accepted connection until it ends.
    pub(crate) async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) {
        match self {
            Self::CrcTcp(service) => service.handle(stream, peer, stop).await,
            Self::Socks5(service) => service.handle(stream, peer, stop).await,
        }
    }

    /// Waits for the mode's background work (a file sink's final sync) after
    /// every connection has ended.
    pub(crate) async fn finish(self) {
        match self {
            Self::CrcTcp(service) => service.finish().await,
            Self::Socks5(_) => {}
        }
    }
}
