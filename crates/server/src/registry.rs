//! The mode registry. Adding a mode is one module and one line in `modes!` below: the
//! module's config type implements `ModeConfig` (its keys, and `prepare`, the one step that
//! validates them into ready-to-run settings), its settings implement `ModeSettings`
//! (`build`: the running service) and its service implements `Mode` (`handle`, and what
//! it holds that a reload must know about). The config stays one serde-tagged enum, so an
//! unknown mode is refused with the list of valid ones. `mode = "http"`
//! ([`crate::modes::http`]) is such a module: its line is `Http("http", ...)`. The traits
//! live in the `mode` module, below the modes, so that the modes never name the registry.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use ipnet::IpNet;

use serde::Deserialize;

pub use crate::mode::Common;

use crate::{
    access_log::{self, AccessLog},
    bounds::{MAX_CONNECTIONS, check_count, invalid},
    mode::{BuildContext, ModeConfig, ModeSettings, Service},
    modes::{crc_tcp, http, socks5},
    proxy_protocol::{ProxyProtocol, ProxySettings},
    stats::ListenerStats,
};

/// Declares the modes: each line is `Variant("name", ConfigType, "what it does, for --help")`.
macro_rules! modes {
    ($($variant:ident($name:literal, $config:ty, $help:expr),)*) => {
        /// The registered modes and what each does, for `--help`.
        pub const MODES: &[(&str, &str)] = &[$(($name, $help)),*];

        /// One `[[listener]]` table, tagged by its `mode` key.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "mode")]
        pub enum ListenerConfig {
            $(
                #[doc = concat!("`mode = \"", $name, "\"`.")]
                #[serde(rename = $name)]
                $variant($config),
            )*
        }

        impl ListenerConfig {
            /// The mode's registered name.
            #[must_use]
            pub fn mode(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)*
                }
            }

            /// The mode's keys, behind the trait every mode's config implements.
            #[must_use]
            pub(crate) fn keys(&self) -> &dyn ModeConfig {
                match self {
                    $(Self::$variant(config) => config,)*
                }
            }
        }
    };
}

modes! {
    CrcTcp(
        "crc-tcp",
        crc_tcp::CrcTcpConfig,
        "receives CRC-checked frames (docs/PROTOCOL.md), hands them to a handler, acks each"
    ),
    Socks5(
        "socks5",
        socks5::Socks5Config,
        "a SOCKS5 proxy (RFC 1928: CONNECT, BIND, UDP ASSOCIATE; RFC 1929 passwords), \
         optionally SOCKS4/4a and HTTP on the same port (protocols)"
    ),
    Http(
        "http",
        http::HttpConfig,
        "an HTTP/1.1 proxy (CONNECT tunnels, absolute-form http:// requests, Basic passwords)"
    ),
}

impl ListenerConfig {
    /// The listener's name: its `name` key, or `MODE[INDEX]`.
    #[must_use]
    pub fn name(&self, index: usize) -> String {
        self.keys()
            .name()
            .map_or_else(|| format!("{}[{index}]", self.mode()), str::to_owned)
    }

    /// The address to listen on.
    #[must_use]
    pub fn bind(&self) -> SocketAddr {
        self.keys().bind()
    }

    /// The `max_connections_per_ip` key, which every mode has.
    #[must_use]
    pub fn max_connections_per_ip(&self) -> Option<usize> {
        self.keys().max_connections_per_ip()
    }

    /// The `proxy_protocol`, `proxy_protocol_from` and `proxy_protocol_timeout` keys, which
    /// every mode has.
    #[must_use]
    pub fn proxy_protocol(&self) -> (ProxyProtocol, &[IpNet], Duration) {
        self.keys().proxy_protocol()
    }

    /// The file a sink of this listener writes, if any.
    #[must_use]
    pub fn sink_path(&self) -> Option<&Path> {
        self.keys().sink_path()
    }

    /// The address a proxy listener binds, which no proxy listener may connect to; `None`
    /// for other modes.
    pub(crate) fn proxy_bind(&self) -> Option<SocketAddr> {
        self.keys().proxy_bind()
    }

    /// Validates the listener and turns it into its ready-to-run settings: every check of the
    /// mode's keys, the `users_file` read, the rules built and every default applied. It is
    /// the one step behind `--check-config`, the start and a reload: what it accepts runs.
    ///
    /// `proxies` are the bind addresses of every proxy listener of the config, which a
    /// proxy listener refuses to connect to (a loop through two listeners is still a loop);
    /// `worker_fds` the descriptors the worker runtimes hold.
    ///
    /// # Errors
    ///
    /// An error naming the key at fault.
    pub(crate) fn prepare(
        &self,
        index: usize,
        proxies: &[SocketAddr],
        worker_fds: u64,
    ) -> anyhow::Result<Prepared> {
        match self.max_connections_per_ip() {
            Some(0) => {
                return Err(invalid(
                    "max_connections_per_ip",
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            Some(limit) => check_count(
                "max_connections_per_ip",
                limit as u64,
                1,
                MAX_CONNECTIONS as u64,
                "",
            )?,
            None => {}
        }
        let (mode, from, timeout) = self.proxy_protocol();
        ProxySettings::validate(mode, from, timeout)?;
        let name = self.name(index);
        let stats = Arc::new(ListenerStats {
            kind: self.keys().stats_kind(),
            ..ListenerStats::default()
        });
        let (common, settings) = self.keys().prepare(name, stats, proxies, worker_fds)?;
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
    pub(crate) settings: Arc<dyn ModeSettings>,
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
        self.settings
            .build(BuildContext {
                name: &self.common.name,
                stats,
                sinks,
                access_log,
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_mode_parses_and_an_unknown_one_lists_them() {
        for (name, _) in MODES {
            let text = format!("mode = \"{name}\"\nbind = \"127.0.0.1:0\"\n");
            let config: ListenerConfig = toml::from_str(&text).unwrap();
            assert_eq!(config.mode(), *name);
            assert_eq!(config.name(3), format!("{name}[3]"));
            assert_eq!(config.bind(), "127.0.0.1:0".parse().unwrap());
            assert_eq!(config.proxy_bind().is_some(), *name != "crc-tcp");
            config.prepare(0, &[], 0).unwrap();
        }
        let error = toml::from_str::<ListenerConfig>("mode = \"gopher\"\nbind = \"127.0.0.1:0\"")
            .unwrap_err()
            .to_string();
        for (name, _) in MODES {
            assert!(error.contains(name), "{error}");
        }
    }
}
