//! `http`: an HTTP/1.1 proxy listener (`CONNECT host:port` tunnels and absolute-form
//! `http://` requests, `Proxy-Authorization: Basic`), the http-proxy crate behind the socks5
//! crate's proxy core.
//!
//! The keys are a subset of `socks5`'s, with the same names, defaults and bounds: an `http`
//! listener is checked and run as a `socks5` listener that serves only the HTTP door
//! (`protocols = ["http"]`, `commands = ["connect"]`), so the users, rules, `via`, limits and
//! the open-proxy guard are validated by the one code that validates them for SOCKS5.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    mode::Common,
    modes::{
        doors::ProtocolName,
        socks5::{self, AuthMode, CommandName, RuleConfig, Socks5Config, UserConfig},
    },
    proxy_protocol::ProxyProtocol,
    stats::ListenerStats,
};

/// The `[[listener]]` keys of `mode = "http"`: see the `socks5` keys of the same names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpKeys {
    /// Name in logs (default `http[INDEX]`).
    #[serde(default)]
    pub name: Option<String>,
    /// Address to listen on.
    pub bind: SocketAddr,
    /// `none` or `password` (`Proxy-Authorization: Basic`).
    #[serde(default)]
    pub auth: AuthMode,
    /// Users for `auth = "password"`.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// A file of `username:password` lines for `auth = "password"`.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// Clients in these networks may skip the password.
    #[serde(default)]
    pub no_auth_networks: Vec<IpNet>,
    /// Access rules, checked in order; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// How allowed requests leave unless their rule says otherwise.
    #[serde(default)]
    pub via: Option<String>,
    /// Local address of outbound sockets.
    #[serde(default)]
    pub outbound_bind: Option<IpAddr>,
    /// Resolving and connecting to a target give up after this.
    #[serde(default = "socks5::default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Happy Eyeballs (RFC 8305) delay; `0s`: one address after another.
    #[serde(default = "socks5::happy_eyeballs_delay", with = "humantime_serde")]
    pub happy_eyeballs_delay: Duration,
    /// Accepted for the same meaning as in `socks5`; see the README for what it bounds.
    #[serde(default = "socks5::default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Every request head must arrive within this (and a kept-alive connection may sit
    /// idle between requests no longer).
    #[serde(
        default = "socks5::default_handshake_timeout",
        with = "humantime_serde"
    )]
    pub handshake_timeout: Duration,
    /// The most bytes of a request head.
    #[serde(default = "socks5::default_max_header_len")]
    pub max_header_len: usize,
    /// Connections at once (default: what the open-file limit allows).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Connections at once from one client IP address (default: no limit).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Set `SO_REUSEPORT`.
    #[serde(default)]
    pub reuse_port: bool,
    /// Expect a PROXY protocol header before each connection's first byte.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// The balancers that may send it.
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpNet>,
    /// The whole header must arrive within this of the accept.
    #[serde(
        default = "crate::proxy_protocol::default_timeout",
        with = "humantime_serde"
    )]
    pub proxy_protocol_timeout: Duration,
    /// A JSON line per finished connection is appended to this file.
    #[serde(default)]
    pub access_log: Option<PathBuf>,
    /// Start even though the listener is an open proxy on a non-loopback address.
    #[serde(default)]
    pub allow_open_proxy: bool,
}

/// A `mode = "http"` listener: its keys, as the `socks5` listener that serves only the HTTP
/// door.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "HttpKeys")]
pub struct HttpConfig(pub Socks5Config);

impl From<HttpKeys> for HttpConfig {
    fn from(keys: HttpKeys) -> Self {
        HttpConfig(Socks5Config {
            name: keys.name,
            bind: keys.bind,
            auth: keys.auth,
            users: keys.users,
            users_file: keys.users_file,
            no_auth_networks: keys.no_auth_networks,
            commands: vec![CommandName::Connect],
            udp_advertise: None,
            outbound_bind: keys.outbound_bind,
            handshake_timeout: keys.handshake_timeout,
            connect_timeout: keys.connect_timeout,
            happy_eyeballs_delay: keys.happy_eyeballs_delay,
            idle_timeout: keys.idle_timeout,
            bind_timeout: socks5::default_bind_timeout(),
            max_connections: keys.max_connections,
            max_connections_per_ip: keys.max_connections_per_ip,
            reuse_port: keys.reuse_port,
            proxy_protocol: keys.proxy_protocol,
            proxy_protocol_from: keys.proxy_protocol_from,
            proxy_protocol_timeout: keys.proxy_protocol_timeout,
            allow_open_proxy: keys.allow_open_proxy,
            rules: keys.rules,
            access_log: keys.access_log,
            via: keys.via,
            protocols: vec![ProtocolName::Http],
            max_header_len: keys.max_header_len,
        })
    }
}

/// `mode = "http"` is checked as its `socks5` listener, and runs as one named `http`.
impl crate::mode::ModeConfig for HttpConfig {
    fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    fn bind(&self) -> SocketAddr {
        self.0.bind
    }

    fn max_connections_per_ip(&self) -> Option<usize> {
        self.0.max_connections_per_ip
    }

    fn proxy_protocol(&self) -> (ProxyProtocol, &[IpNet], Duration) {
        crate::mode::ModeConfig::proxy_protocol(&self.0)
    }

    fn proxy_bind(&self) -> Option<SocketAddr> {
        Some(self.0.bind)
    }

    fn prepare(
        &self,
        name: String,
        stats: Arc<ListenerStats>,
        proxies: &[SocketAddr],
        worker_fds: u64,
    ) -> anyhow::Result<(Common, Arc<dyn crate::mode::ModeSettings>)> {
        let mut options = self.0.prepare(proxies)?;
        options.mode = "http";
        Ok((self.0.common(name, stats, worker_fds), Arc::new(options)))
    }
}
