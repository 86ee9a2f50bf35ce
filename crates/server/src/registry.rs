//! The mode registry: every mode is one variant of [`ListenerConfig`] (so
//! serde rejects an unknown mode and lists the valid names), one entry in
//! [`MODES`] (shown by `server --help`) and one arm in each `match` below.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use ipnet::IpNet;

use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    access_log::{self, AccessLog},
    config::invalid,
    modes::{crc_tcp, http, socks5},
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
        "a SOCKS5 proxy (RFC 1928: CONNECT, BIND, UDP ASSOCIATE; RFC 1929 passwords), \
         optionally SOCKS4/4a and HTTP on the same port (protocols)",
    ),
    (
        "http",
        "an HTTP/1.1 proxy (CONNECT tunnels, absolute-form http:// requests, Basic passwords)",
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
    /// `mode = "http"`.
    Http(http::HttpConfig),
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
    /// The `access_log` file, if any.
    pub access_log: Option<std::path::PathBuf>,
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
            Self::Http(_) => "http",
        }
    }

    /// The listener's name: its `name` key, or `MODE[INDEX]`.
    #[must_use]
    pub fn name(&self, index: usize) -> String {
        let name = match self {
            Self::CrcTcp(c) => c.name.clone(),
            Self::Socks5(c) | Self::Http(http::HttpConfig(c)) => c.name.clone(),
        };
        name.unwrap_or_else(|| format!("{}[{index}]", self.mode()))
    }

    /// The address to listen on.
    #[must_use]
    pub fn bind(&self) -> SocketAddr {
        match self {
            Self::CrcTcp(c) => c.bind,
            Self::Socks5(c) | Self::Http(http::HttpConfig(c)) => c.bind,
        }
    }

    /// The `max_connections_per_ip` key, which every mode has.
    #[must_use]
    pub fn max_connections_per_ip(&self) -> Option<usize> {
        match self {
            Self::CrcTcp(c) => c.max_connections_per_ip,
            Self::Socks5(c) | Self::Http(http::HttpConfig(c)) => c.max_connections_per_ip,
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
            Self::Socks5(c) | Self::Http(http::HttpConfig(c)) => (
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
            Self::Socks5(_) | Self::Http(_) => None,
        }
    }

    /// The address a proxy listener binds, which no proxy listener may connect to; `None`
    /// for other modes.
    pub(crate) fn proxy_bind(&self) -> Option<SocketAddr> {
        match self {
            Self::Socks5(c) | Self::Http(http::HttpConfig(c)) => Some(c.bind),
            Self::CrcTcp(_) => None,
        }
    }

    /// Validates the listener and turns it into its ready-to-run settings: every check of the
    /// mode's keys, the `users_file` read, the rules built and every default applied. It is
    /// the one step behind `--check-config`, the start and a reload: what it accepts runs.
    ///
    /// `proxies` are the bind addresses of every proxy listener of the config, which a
    /// proxy listener refuses to connect to (a loop through two listeners is still a loop).
    ///
    /// # Errors
    ///
    /// An error naming the key at fault.
    pub(crate) fn prepare(&self, index: usize, proxies: &[SocketAddr]) -> anyhow::Result<Prepared> {
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
        let name = self.name(index);
        let stats = Arc::new(ListenerStats::default());
        let (common, settings) = match self {
            Self::CrcTcp(c) => {
                c.validate()?;
                (c.common(name, stats), ModeSettings::CrcTcp(c.clone()))
            }
            Self::Socks5(c) | Self::Http(http::HttpConfig(c)) => {
                let options = c.prepare(proxies)?;
                (c.common(name, stats), ModeSettings::Socks5(options))
            }
        };
        Ok(Prepared {
            common,
            mode: self.mode(),
            settings,
        })
    }
}

/// One listener, validated and ready to run: what [`ListenerConfig::prepare`] makes of it.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// What every mode has (with fresh counters; a reload that keeps the listener keeps
    /// its counters instead).
    pub(crate) common: Common,
    /// The mode's registered name.
    pub(crate) mode: &'static str,
    /// The mode's own settings.
    pub(crate) settings: ModeSettings,
}

/// The ready-to-run settings of each mode.
#[derive(Debug, Clone)]
pub(crate) enum ModeSettings {
    /// The checked keys (the file sink is opened when the listener starts).
    CrcTcp(crc_tcp::CrcTcpConfig),
    /// The session options, users and rules included.
    Socks5(socks5::Socks5Options),
}

impl Prepared {
    /// Builds the running service; opens a file sink, unless `sinks` has one running for
    /// the same file, which it then shares.
    ///
    /// # Errors
    ///
    /// When a resource the mode needs cannot be had (a sink's file, say).
    ///
    /// The same goes for the `access_log`: one running for the same file (in `logs`) is
    /// shared.
    pub(crate) async fn build(
        &self,
        sinks: &crc_tcp::Sinks,
        logs: &[Arc<AccessLog>],
    ) -> anyhow::Result<Service> {
        let stats = Arc::clone(&self.common.stats);
        let access_log = match &self.common.access_log {
            Some(path) => Some(access_log::Sink {
                log: match logs.iter().find(|log| log.path() == path.as_path()) {
                    Some(running) => Arc::clone(running),
                    None => AccessLog::open(path)?,
                },
                listener: Arc::from(self.common.name.as_str()),
                stats: Arc::clone(&stats),
            }),
            None => None,
        };
        Ok(match &self.settings {
            ModeSettings::CrcTcp(c) => Service::CrcTcp(Arc::new(
                crc_tcp::CrcTcp::new(c, &self.common.name, stats, sinks, access_log).await?,
            )),
            ModeSettings::Socks5(options) => Service::Socks5(Arc::new(socks5::Socks5::new(
                self.mode,
                options.clone(),
                stats,
                access_log,
            ))),
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

    /// The access log of this service, if it has one.
    pub(crate) fn access_log(&self) -> Option<Arc<AccessLog>> {
        match self {
            Self::CrcTcp(service) => service.access_log(),
            Self::Socks5(service) => service.access_log(),
        }
    }

    /// The file sink of this service, if it has one.
    pub(crate) fn sink(&self) -> Option<Arc<crate::sinks::file::FileSink>> {
        match self {
            Self::CrcTcp(service) => service.sink(),
            Self::Socks5(_) => None,
        }
    }
}
