//! `socks5`: a SOCKS5 proxy listener. The protocol lives in the `socks5`
//! crate; this module turns the TOML section into its options, applies the
//! open-proxy guard and logs one line per finished session.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use ipnet::IpNet;
use serde::Deserialize;
use socks5::wire::protocol::Protocol;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    access_log::{self, AccessLog},
    bounds::{MAX_CONNECTIONS, MAX_DURATION, MIN_TIMEOUT, check_count, check_duration, invalid},
    mode::Common,
    modes::doors::{self, CoreDialer, NoDoor, Prefixed, ProtocolName},
    proxy_protocol::{ProxyProtocol, ProxySettings},
    stats::{HTTP_STATUSES, ListenerStats, SOCKS5_REPLIES},
};

/// The `[[listener]]` keys of `mode = "socks5"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socks5Config {
    /// Name in logs (default `socks5[INDEX]`).
    #[serde(default)]
    pub name: Option<String>,
    /// Address to listen on.
    pub bind: SocketAddr,
    /// `none` or `password`.
    #[serde(default)]
    pub auth: AuthMode,
    /// Users for `auth = "password"`.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// A file of `username:password` lines for `auth = "password"`.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// Clients in these networks may skip the password (e.g. browsers that cannot send one).
    #[serde(default)]
    pub no_auth_networks: Vec<IpNet>,
    /// Enabled commands: any of `connect`, `bind`, `udp-associate`.
    #[serde(default = "all_commands")]
    pub commands: Vec<CommandName>,
    /// The address UDP ASSOCIATE replies advertise (for a server behind NAT).
    #[serde(default)]
    pub udp_advertise: Option<IpAddr>,
    /// Local address of outbound sockets.
    #[serde(default)]
    pub outbound_bind: Option<IpAddr>,
    /// Greeting, authentication and request must complete within this.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Outbound connects give up after this.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Happy Eyeballs (RFC 8305): the next address of a name is tried after this without a
    /// connection; `0s`: one address after another.
    #[serde(default = "happy_eyeballs_delay", with = "humantime_serde")]
    pub happy_eyeballs_delay: Duration,
    /// A tunnel or UDP association with no traffic for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// BIND waits this long for the incoming connection.
    #[serde(default = "default_bind_timeout", with = "humantime_serde")]
    pub bind_timeout: Duration,
    /// Sessions at once (default: what the open-file limit allows).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Sessions at once from one client IP address (default: no limit).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Set `SO_REUSEPORT`.
    #[serde(default)]
    pub reuse_port: bool,
    /// Expect a PROXY protocol header before each connection's first byte.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// The balancers that may send it; required when `proxy_protocol` is on.
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpNet>,
    /// The whole header must arrive within this of the accept.
    #[serde(
        default = "crate::proxy_protocol::default_timeout",
        with = "humantime_serde"
    )]
    pub proxy_protocol_timeout: Duration,
    /// Start even though the listener is an open proxy on a non-loopback address.
    #[serde(default)]
    pub allow_open_proxy: bool,
    /// Access rules, checked in order; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// A JSON line per finished session is appended to this file.
    #[serde(default)]
    pub access_log: Option<PathBuf>,
    /// How allowed CONNECTs leave unless their rule says otherwise: `direct`,
    /// `socks5://[user:password@]host:port` or `http://[user:password@]host:port`.
    #[serde(default)]
    pub via: Option<String>,
    /// The protocols served on this port: any of `socks5`, `socks4`, `http` (default
    /// `["socks5"]`).
    #[serde(default = "doors::default_protocols")]
    pub protocols: Vec<ProtocolName>,
    /// The HTTP door: the most bytes of a request head (default 16 KiB, 8 KiB to 1 MiB).
    #[serde(default = "default_max_header_len")]
    pub max_header_len: usize,
}

pub(crate) fn default_max_header_len() -> usize {
    http_proxy::ProxyOptions::default().max_header_len
}
/// The bounds of `max_header_len`: hyper's smallest buffer, and 1 MiB.
const MAX_HEADER_LEN_BOUNDS: (usize, usize) = (http_proxy::MIN_HEADER_LEN, 1024 * 1024);

/// `auth = "none" | "password"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// No authentication.
    #[default]
    None,
    /// RFC 1929 username/password (except for `no_auth_networks`).
    Password,
}

/// One `users` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name (1 to 255 bytes).
    pub username: String,
    /// The password (1 to 255 bytes).
    pub password: String,
}

/// A command name in `commands`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs, reason = "the names are RFC 1928's commands")]
pub enum CommandName {
    Connect,
    Bind,
    UdpAssociate,
}

/// One `[[listener.rules]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `allow` or `deny`.
    pub action: ActionName,
    /// Client networks (any if empty).
    #[serde(default)]
    pub clients: Vec<IpNet>,
    /// Users, with `auth = "password"` (any client, logged in or not, if empty).
    #[serde(default)]
    pub users: Vec<String>,
    /// Destination networks (any if empty).
    #[serde(default)]
    pub destinations: Vec<IpNet>,
    /// Destination names: `example.com` or `*.example.com` (any if empty).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Destination ports: `443` or `"8000-8999"` (any if empty).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// For an allow rule: how matching CONNECTs leave (default: the listener's `via`).
    #[serde(default)]
    pub via: Option<String>,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs, reason = "the names say it")]
pub enum ActionName {
    Allow,
    Deny,
}

/// A port or a range of ports, as written in `ports`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// `443`.
    One(u16),
    /// `"8000-8999"` or `"443"`.
    Text(String),
}

impl PortSpec {
    fn range(&self) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
        match self {
            Self::One(port) => Ok(*port..=*port),
            Self::Text(text) => {
                let parse = |s: &str| {
                    s.trim().parse::<u16>().with_context(|| {
                        format!("{text:?} is not a port or a range like \"8000-8999\"")
                    })
                };
                let (low, high) = match text.split_once('-') {
                    Some((low, high)) => (parse(low)?, parse(high)?),
                    None => (parse(text)?, parse(text)?),
                };
                if low > high {
                    bail!("{text:?}: the range is empty ({low} > {high})");
                }
                Ok(low..=high)
            }
        }
    }
}

fn all_commands() -> Vec<CommandName> {
    vec![
        CommandName::Connect,
        CommandName::Bind,
        CommandName::UdpAssociate,
    ]
}
// The timeouts' defaults are the library's (`socks5::ServerOptions`), written in one place.
pub(crate) fn default_handshake_timeout() -> Duration {
    socks5::ServerOptions::default().handshake_timeout
}
pub(crate) fn default_connect_timeout() -> Duration {
    socks5::ServerOptions::default().connect_timeout
}
pub(crate) fn happy_eyeballs_delay() -> Duration {
    socks5::ServerOptions::default().happy_eyeballs_delay
}
/// The shortest `happy_eyeballs_delay` but `0s` (off): RFC 8305 §5 sets 10 ms as the floor.
const MIN_HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(10);
pub(crate) fn default_idle_timeout() -> Duration {
    socks5::ServerOptions::default().idle_timeout
}
pub(crate) fn default_bind_timeout() -> Duration {
    socks5::ServerOptions::default().bind_timeout
}

/// File descriptors kept aside for listeners, sinks and the runtime (the worker runtimes'
/// come on top).
const RESERVED_FDS: u64 = 64;
/// The most sessions the default allows, however high the open-file limit.
const MAX_DEFAULT_CONNECTIONS: u64 = 65_536;

/// The open-file limit (soft) of this process.
fn open_file_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Sessions the open-file limit allows besides `worker_fds` (those of the worker runtimes):
/// each holds two descriptors (client and outbound, or client and UDP relay).
fn connections_for_fd_limit(limit: u64, worker_fds: u64) -> usize {
    let sessions = limit.saturating_sub(RESERVED_FDS.saturating_add(worker_fds)) / 2;
    usize::try_from(sessions.clamp(1, MAX_DEFAULT_CONNECTIONS)).unwrap_or(1)
}

/// The ready-to-run settings of a proxy listener (`socks5`, or `http`), as the validation
/// builds them from a [`Socks5Config`].
#[derive(Debug, Clone)]
pub struct Socks5Options {
    /// The mode it runs as: `socks5`, or `http` (for the logs).
    pub mode: &'static str,
    /// The session options of every door (users, rules, timeouts, `via`...).
    pub session: Arc<socks5::ServerOptions>,
    /// The same users and `no_auth_networks`, for the HTTP door's `Proxy-Authorization`.
    pub(crate) policy: Arc<socks5::AuthPolicy>,
    /// The protocols served, never empty, no duplicates.
    pub protocols: Vec<ProtocolName>,
    /// The HTTP door's options.
    pub http: http_proxy::ProxyOptions,
}

impl Socks5Config {
    /// Checks every key and builds the session options: the users (`users_file` read here,
    /// once), the rules, the commands and the timeouts.
    ///
    /// `proxies` are the bind addresses of every proxy listener of the config, which this
    /// listener refuses to connect to.
    pub(crate) fn prepare(&self, proxies: &[SocketAddr]) -> anyhow::Result<Socks5Options> {
        let users = self.load_users()?;
        match self.auth {
            AuthMode::None if !users.is_empty() => {
                return Err(invalid(
                    "users",
                    "users are set but auth = \"none\": set auth = \"password\" to use them",
                ));
            }
            AuthMode::None if !self.no_auth_networks.is_empty() => {
                return Err(invalid(
                    "no_auth_networks",
                    "has no effect with auth = \"none\" (every client needs none)",
                ));
            }
            AuthMode::Password if users.is_empty() => {
                return Err(invalid(
                    "users",
                    "auth = \"password\" needs at least one user in users or users_file",
                ));
            }
            _ => {}
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let at = |reason: String| invalid("rules.users", format!("rules[{index}]: {reason}"));
            if !rule.users.is_empty() && self.auth == AuthMode::None {
                return Err(at(
                    "nobody logs in with auth = \"none\", so a rule with users never matches"
                        .into(),
                ));
            }
            if let Some(unknown) = rule.users.iter().find(|user| !users.contains_key(*user)) {
                return Err(at(format!(
                    "{unknown:?} is not a user of users or users_file"
                )));
            }
        }
        if self.protocols.is_empty() {
            return Err(invalid(
                "protocols",
                "list at least one of \"socks5\", \"socks4\", \"http\"",
            ));
        }
        for (index, protocol) in self.protocols.iter().enumerate() {
            if self
                .protocols
                .get(..index)
                .unwrap_or_default()
                .contains(protocol)
            {
                return Err(invalid(
                    "protocols",
                    format!("{:?} is listed twice", protocol.as_str()),
                ));
            }
        }
        let (min_header, max_header) = MAX_HEADER_LEN_BOUNDS;
        check_count(
            "max_header_len",
            self.max_header_len as u64,
            min_header as u64,
            max_header as u64,
            "",
        )?;
        if self.commands.is_empty() {
            return Err(invalid(
                "commands",
                "enable at least one of \"connect\", \"bind\", \"udp-associate\"",
            ));
        }
        for (key, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("bind_timeout", self.bind_timeout),
        ] {
            check_duration(key, value, MIN_TIMEOUT, MAX_DURATION)?;
        }
        let delay = self.happy_eyeballs_delay;
        if !delay.is_zero() && !(MIN_HAPPY_EYEBALLS_DELAY..=MAX_DURATION).contains(&delay) {
            let show = humantime_serde::re::humantime::format_duration;
            return Err(invalid(
                "happy_eyeballs_delay",
                format!(
                    "{} is out of range: it must be \"0s\" (one address after another) or {} to {}",
                    show(delay),
                    show(MIN_HAPPY_EYEBALLS_DELAY),
                    show(MAX_DURATION)
                ),
            ));
        }
        if let Some(max_connections) = self.max_connections {
            check_count(
                "max_connections",
                max_connections as u64,
                1,
                MAX_CONNECTIONS as u64,
                "",
            )?;
        }
        let via = self.via()?;
        let rules = self.rules()?;
        if !self.bind.ip().is_loopback() && self.is_open(&rules) && !self.allow_open_proxy {
            bail!(
                "bind: {} is reachable from other hosts and this listener would proxy for anyone \
                 (no password and no rule that limits clients): that is an open proxy. Set auth = \"password\", \
                 or add rules that allow your clients' networks followed by a rule with action = \"deny\", \
                 or set allow_open_proxy = true if you mean it",
                self.bind
            );
        }
        let auth = Arc::new(match self.auth {
            AuthMode::None => socks5::AuthPolicy::none(),
            AuthMode::Password => {
                socks5::AuthPolicy::password(users, self.no_auth_networks.clone())
            }
        });
        let has = |c| self.commands.contains(&c);
        // A CONNECT to this listener, or to another proxy listener of this server, would loop
        // back into it (port 0: the port a client reached, for this listener only).
        let listen_addresses = std::iter::once(self.bind)
            .chain(
                proxies
                    .iter()
                    .copied()
                    .filter(|other| *other != self.bind && other.port() != 0),
            )
            .collect();
        let session = socks5::ServerOptions::builder()
            .handshake_timeout(self.handshake_timeout)
            .connect_timeout(self.connect_timeout)
            .happy_eyeballs_delay(self.happy_eyeballs_delay)
            .idle_timeout(self.idle_timeout)
            .bind_timeout(self.bind_timeout)
            .commands(socks5::Commands {
                connect: has(CommandName::Connect),
                bind: has(CommandName::Bind),
                udp_associate: has(CommandName::UdpAssociate),
            })
            .shared_authenticator(Arc::clone(&auth) as Arc<dyn socks5::Authenticator>)
            .rules(rules)
            .udp_advertise(self.udp_advertise)
            .outbound_bind(self.outbound_bind)
            .listen_addresses(listen_addresses)
            .via(via)
            .build();
        let mut http = http_proxy::ProxyOptions::default();
        http.header_read_timeout = self.handshake_timeout;
        http.max_header_len = self.max_header_len;
        // The core bounds each dial by connect_timeout; this is only a backstop.
        http.dial_timeout = self.connect_timeout.saturating_add(Duration::from_secs(1));
        http.idle_timeout = Some(self.idle_timeout);
        Ok(Socks5Options {
            mode: "socks5",
            session: Arc::new(session),
            policy: auth,
            protocols: self.protocols.clone(),
            http,
        })
    }

    /// Whether any client may use the proxy without a password: no auth (or
    /// a password with no-auth networks that together cover every IPv4 or
    /// every IPv6 address, however they are split), and rules that let a
    /// client from an unnamed network through.
    fn is_open(&self, rules: &socks5::Rules) -> bool {
        let anyone_without_password = match self.auth {
            AuthMode::None => true,
            AuthMode::Password => [true, false]
                .into_iter()
                .any(|v4| socks5::networks_cover_family(&self.no_auth_networks, v4)),
        };
        anyone_without_password && !rules.limits_clients()
    }

    /// The access rules, in the library's terms.
    fn rules(&self) -> anyhow::Result<socks5::Rules> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for (index, rule) in self.rules.iter().enumerate() {
            let at = |key: &'static str, e: String| invalid(key, format!("rules[{index}]: {e}"));
            let mut domains = Vec::with_capacity(rule.domains.len());
            for domain in &rule.domains {
                domains.push(socks5::DomainPattern::new(domain).map_err(|_| {
                    at("rules.domains", format!("{domain:?} is not a name like \"example.com\", \"*.example.com\" or \"*\""))
                })?);
            }
            let ports = rule
                .ports
                .iter()
                .map(PortSpec::range)
                .collect::<anyhow::Result<_>>()
                .map_err(|e| at("rules.ports", format!("{e:#}")))?;
            let via = match (&rule.via, rule.action) {
                (None, _) => None,
                (Some(_), ActionName::Deny) => {
                    return Err(at(
                        "rules.via",
                        "a deny rule sends nothing anywhere: via is for allow rules".into(),
                    ));
                }
                (Some(text), ActionName::Allow) => {
                    Some(parse_via(text).map_err(|e| at("rules.via", format!("{e:#}")))?)
                }
            };
            rules.push(socks5::Rule {
                action: match rule.action {
                    ActionName::Allow => socks5::Action::Allow,
                    ActionName::Deny => socks5::Action::Deny,
                },
                clients: rule.clients.clone(),
                users: rule.users.clone(),
                destinations: rule.destinations.clone(),
                domains,
                ports,
                via,
            });
        }
        Ok(socks5::Rules {
            rules,
            default: socks5::Action::Allow,
        })
    }

    /// The listener's `via` (default: direct).
    fn via(&self) -> anyhow::Result<socks5::Via> {
        match &self.via {
            None => Ok(socks5::Via::Direct),
            Some(text) => parse_via(text).map_err(|e| invalid("via", format!("{e:#}"))),
        }
    }

    /// The users of `users` and `users_file`.
    fn load_users(&self) -> anyhow::Result<HashMap<String, String>> {
        let mut users = HashMap::new();
        let mut add =
            |username: &str, password: &str, at: &dyn Fn() -> String| -> anyhow::Result<()> {
                if username.is_empty()
                    || username.len() > 255
                    || password.is_empty()
                    || password.len() > 255
                {
                    bail!(
                        "{}: user names and passwords must be 1 to 255 bytes long (RFC 1929)",
                        at()
                    );
                }
                if users
                    .insert(username.to_owned(), password.to_owned())
                    .is_some()
                {
                    bail!("{}: user {username:?} is defined twice", at());
                }
                Ok(())
            };
        for (index, user) in self.users.iter().enumerate() {
            add(&user.username, &user.password, &|| {
                format!("users[{index}]")
            })?;
        }
        if let Some(path) = &self.users_file {
            let text = read_users_file(path)?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() || line.trim_start().starts_with('#') {
                    continue;
                }
                let at = || format!("users_file {} line {}", path.display(), number + 1);
                let Some((username, password)) = line.split_once(':') else {
                    bail!("{}: expected username:password", at());
                };
                add(username, password, &at)?;
            }
        }
        Ok(users)
    }

    pub(crate) fn common(
        &self,
        name: String,
        stats: Arc<ListenerStats>,
        worker_fds: u64,
    ) -> Common {
        let limit = open_file_limit();
        let fits = connections_for_fd_limit(limit, worker_fds);
        let max_connections = match self.max_connections {
            Some(configured) => {
                if configured > fits {
                    warn!(listener = %name, max_connections = configured, open_file_limit = limit,
                        "max_connections needs about {} file descriptors, more than the open-file limit allows; \
                         raise it (ulimit -n, LimitNOFILE=) or lower max_connections to {fits}",
                        configured
                            .saturating_mul(2)
                            .saturating_add(RESERVED_FDS.saturating_add(worker_fds) as usize));
                }
                configured
            }
            None => fits,
        };
        Common {
            stats,
            name,
            bind: self.bind,
            max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            reuse_port: self.reuse_port,
            proxy_protocol: ProxySettings::new(
                self.proxy_protocol,
                &self.proxy_protocol_from,
                self.proxy_protocol_timeout,
            ),
            access_log: self.access_log.clone(),
            shared_runtime: false,
        }
    }
}

/// A `via` value; the error shows no password.
fn parse_via(text: &str) -> anyhow::Result<socks5::Via> {
    Ok(text.parse::<socks5::Via>()?)
}

fn read_users_file(path: &Path) -> anyhow::Result<String> {
    crate::bounds::read_bounded(path, crate::bounds::MAX_FILE_LEN)
        .with_context(|| format!("users_file: cannot read {}", path.display()))
}

/// A running proxy listener (`socks5`, or `http`), shared by its sessions.
pub struct Socks5 {
    /// `socks5` or `http`, for the log and the access log.
    mode: &'static str,
    options: Socks5Options,
    stats: Arc<ListenerStats>,
    access_log: Option<access_log::Sink>,
}

impl std::fmt::Debug for Socks5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socks5")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Socks5 {
    /// A running listener of `mode` with the options [`Socks5Config::prepare`] built.
    #[must_use]
    pub(crate) fn new(
        mode: &'static str,
        options: Socks5Options,
        stats: Arc<ListenerStats>,
        access_log: Option<access_log::Sink>,
    ) -> Self {
        Self {
            mode,
            options,
            stats,
            access_log,
        }
    }

    /// The access log, if the listener has one.
    pub(crate) fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.access_log.as_ref().map(|sink| Arc::clone(&sink.log))
    }

    /// Serves one connection through the door its first bytes choose (or the only one), and
    /// logs its summary.
    pub(crate) async fn handle(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) {
        let (door, prefix) = match self.options.protocols.as_slice() {
            [only] => (*only, bytes::Bytes::new()),
            served => {
                let limit = self.options.session.handshake_timeout;
                let chosen = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    chosen = doors::choose(&mut stream, limit) => chosen,
                };
                match chosen {
                    Ok((protocol, prefix)) => {
                        match ProtocolName::of(protocol).filter(|door| served.contains(door)) {
                            Some(door) => (door, prefix),
                            None => {
                                debug!(client = %peer, ?protocol, "closed a connection speaking a protocol this listener does not serve");
                                self.handshake_failed(0);
                                return;
                            }
                        }
                    }
                    Err(reason) => {
                        debug!(client = %peer, %reason, "closed a connection before its protocol was known");
                        self.handshake_failed(match reason {
                            NoDoor::Timeout => 3,
                            NoDoor::Closed | NoDoor::Io(_) => 4,
                        });
                        return;
                    }
                }
            }
        };
        if let Some(counter) = self.stats.protocols.get(door.index()) {
            ListenerStats::add(counter, 1);
        }
        let options = &self.options.session;
        match door {
            ProtocolName::Socks5 => {
                let report = socks5::serve(stream, peer, options, stop).await;
                self.finish_socks(&report);
            }
            ProtocolName::Socks4 => {
                let report = socks5::serve_socks4(stream, peer, options, stop).await;
                self.finish_socks(&report);
            }
            ProtocolName::Http => {
                let dialer = Arc::new(CoreDialer {
                    options: Arc::clone(options),
                    client: peer.ip().to_canonical(),
                    reached: stream.local_addr().ok(),
                });
                let auth: Arc<dyn http_proxy::BasicAuth> = Arc::clone(&self.options.policy) as _;
                let proxy =
                    http_proxy::HttpProxy::new(self.options.http.clone(), dialer).with_auth(auth);
                let report = proxy.serve(Prefixed::new(prefix, stream), peer, stop).await;
                self.finish_http(&report);
            }
        }
    }

    /// Counts a connection closed before any door took it ([`HANDSHAKE_FAILURES`] index).
    fn handshake_failed(&self, reason: usize) {
        if let Some(counter) = self.stats.socks5.handshake_failures.get(reason) {
            ListenerStats::add(counter, 1);
        }
    }

    /// Counts and logs a finished SOCKS5 or SOCKS4 session.
    fn finish_socks(&self, report: &socks5::SessionReport) {
        let protocol = match report.protocol {
            Protocol::Socks4 => "socks4",
            _ => "socks5",
        };
        let duration_ms = u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX);
        ListenerStats::add(&self.stats.bytes_in, report.bytes_up);
        ListenerStats::add(&self.stats.bytes_out, report.bytes_down);
        count(&self.stats, report);
        if let Some(log) = &self.access_log {
            log.write(&access_log::Socks5Entry {
                time: access_log::now(),
                listener: &log.listener,
                mode: self.mode,
                protocol,
                client: report.client.to_string(),
                user: report.user.as_deref(),
                command: report.command.map(|command| match command {
                    socks5::Command::Connect => "connect",
                    socks5::Command::Bind => "bind",
                    socks5::Command::UdpAssociate => "udp-associate",
                }),
                destination: report.destination.as_ref().map(ToString::to_string),
                reply: report
                    .reply
                    .and_then(|reply| SOCKS5_REPLIES.get(usize::from(u8::from(reply))).copied()),
                status: None,
                bytes_in: report.bytes_up,
                bytes_out: report.bytes_down,
                duration_ms,
                error: report.error.as_ref().map(ToString::to_string),
            });
        }
        let Some(command) = report.command else {
            if let Some(error) = &report.error {
                debug!(client = %report.client, protocol, %error, duration_ms, "session ended before a request");
            }
            return;
        };
        ListenerStats::add(&self.stats.sessions, 1);
        if report.error.is_some() || report.reply != Some(socks5::Reply::Succeeded) {
            ListenerStats::add(&self.stats.sessions_failed, 1);
        }
        let command = match command {
            socks5::Command::Connect => "connect",
            socks5::Command::Bind => "bind",
            socks5::Command::UdpAssociate => "udp-associate",
        };
        let destination = report
            .destination
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        let reply = report.reply.map_or_else(
            || "-".to_owned(),
            |r| format!("{r:?} ({:#04x})", u8::from(r)),
        );
        let user = report.user.as_deref().unwrap_or("-");
        let error = report.error.as_ref().map(ToString::to_string);
        let via = report.via.as_ref().map(ToString::to_string);
        info!(
            client = %report.client,
            protocol,
            user,
            command,
            destination,
            via,
            reply,
            bytes_up = report.bytes_up,
            bytes_down = report.bytes_down,
            duration_ms,
            error,
            "session"
        );
    }

    /// Counts and logs a finished HTTP session.
    fn finish_http(&self, report: &http_proxy::SessionReport) {
        let duration_ms = u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX);
        ListenerStats::add(&self.stats.bytes_in, report.bytes_in);
        ListenerStats::add(&self.stats.bytes_out, report.bytes_out);
        let connect = report.last_method.as_ref() == Some(&http_proxy::Method::CONNECT);
        let command = if connect { "connect" } else { "forward" };
        let status = report.last_status.map(|status| status.as_u16());
        if matches!(report.error, Some(http_proxy::Error::AuthFailed)) {
            ListenerStats::add(&self.stats.socks5.auth_failures, 1);
        }
        if matches!(
            report.error,
            Some(http_proxy::Error::Dial(
                http_proxy::DialError::Denied { .. }
            ))
        ) {
            ListenerStats::add(&self.stats.rule_refused, 1);
        }
        let status_class = status.map_or(HTTP_STATUSES.len() - 1, |status| {
            usize::from((status / 100).clamp(1, 5)) - 1
        });
        if report.requests > 0 {
            ListenerStats::add(&self.stats.sessions, 1);
            if report.error.is_some() || status.is_none_or(|status| status >= 400) {
                ListenerStats::add(&self.stats.sessions_failed, 1);
            }
            if let Some(counter) = self
                .stats
                .http
                .get(usize::from(!connect))
                .and_then(|statuses| statuses.get(status_class))
            {
                ListenerStats::add(counter, 1);
            }
            self.stats.socks5.session.observe(report.duration);
        } else {
            // Nothing answered: a head that never came, or one hyper refused (400, 431).
            self.handshake_failed(match &report.error {
                Some(http_proxy::Error::Http(error)) if error.is_timeout() => 3,
                Some(http_proxy::Error::Http(error)) if error.is_incomplete_message() => 4,
                Some(_) => 0,
                None => 4,
            });
        }
        let destination = report
            .tunnel
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| report.last_host.clone());
        if let Some(log) = &self.access_log {
            log.write(&access_log::Socks5Entry {
                time: access_log::now(),
                listener: &log.listener,
                mode: self.mode,
                protocol: "http",
                client: report.client.to_string(),
                user: report.user.as_deref(),
                command: report.last_method.as_ref().map(|_| command),
                destination: destination.clone(),
                reply: None,
                status,
                bytes_in: report.bytes_in,
                bytes_out: report.bytes_out,
                duration_ms,
                error: report.error.as_ref().map(ToString::to_string),
            });
        }
        if report.requests == 0 {
            if let Some(error) = &report.error {
                debug!(client = %report.client, protocol = "http", %error, duration_ms, "session ended before a request");
            }
            return;
        }
        let user = report.user.as_deref().unwrap_or("-");
        let error = report.error.as_ref().map(ToString::to_string);
        info!(
            client = %report.client,
            protocol = "http",
            user,
            command,
            destination = destination.as_deref().unwrap_or("-"),
            status,
            requests = report.requests,
            bytes_up = report.bytes_in,
            bytes_down = report.bytes_out,
            duration_ms,
            error,
            "session"
        );
    }
}

/// The registry's view of `mode = "socks5"` (and, through [`crate::modes::http`], of
/// `mode = "http"`).
impl crate::mode::ModeConfig for Socks5Config {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn bind(&self) -> SocketAddr {
        self.bind
    }

    fn max_connections_per_ip(&self) -> Option<usize> {
        self.max_connections_per_ip
    }

    fn proxy_protocol(&self) -> (ProxyProtocol, &[IpNet], Duration) {
        (
            self.proxy_protocol,
            &self.proxy_protocol_from,
            self.proxy_protocol_timeout,
        )
    }

    fn proxy_bind(&self) -> Option<SocketAddr> {
        Some(self.bind)
    }

    fn prepare(
        &self,
        name: String,
        stats: Arc<ListenerStats>,
        proxies: &[SocketAddr],
        worker_fds: u64,
    ) -> anyhow::Result<(Common, Arc<dyn crate::mode::ModeSettings>)> {
        let options = Socks5Config::prepare(self, proxies)?;
        Ok((self.common(name, stats, worker_fds), Arc::new(options)))
    }
}

impl crate::mode::ModeSettings for Socks5Options {
    fn build<'a>(&'a self, context: crate::mode::BuildContext<'a>) -> crate::mode::BuildFuture<'a> {
        let service = Socks5::new(self.mode, self.clone(), context.stats, context.access_log);
        Box::pin(std::future::ready(Ok(
            Arc::new(service) as crate::mode::Service
        )))
    }
}

impl crate::mode::Mode for Socks5 {
    fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> crate::mode::HandleFuture<'_> {
        Box::pin(Socks5::handle(self, stream, peer, stop))
    }

    fn access_log(&self) -> Option<Arc<AccessLog>> {
        Socks5::access_log(self)
    }
}

/// Adds one finished session to the listener's socks5 metrics.
fn count(stats: &ListenerStats, report: &socks5::SessionReport) {
    let socks = &stats.socks5;
    if matches!(report.error, Some(socks5::Error::AuthFailed)) {
        ListenerStats::add(&socks.auth_failures, 1);
    }
    if matches!(
        report.error,
        Some(socks5::Error::Denied { .. } | socks5::Error::ClientDenied { .. })
    ) {
        ListenerStats::add(&stats.rule_refused, 1);
    }
    let Some(command) = report.command else {
        if let Some(error) = &report.error {
            let reason = handshake_failure(error);
            if let Some(counter) = socks.handshake_failures.get(reason) {
                ListenerStats::add(counter, 1);
            }
        }
        return;
    };
    let command = match command {
        socks5::Command::Connect => 0,
        socks5::Command::Bind => 1,
        socks5::Command::UdpAssociate => 2,
    };
    // Reply codes 0 to 8 index themselves; no reply is the last column.
    let reply = report.reply.map_or(SOCKS5_REPLIES.len() - 1, |reply| {
        usize::from(u8::from(reply))
    });
    if let Some(counter) = socks
        .requests
        .get(command)
        .and_then(|replies| replies.get(reply))
    {
        ListenerStats::add(counter, 1);
    }
    if let Some(connect) = report.connect_time {
        socks.connect.observe(connect);
    }
    socks.session.observe(report.duration);
    ListenerStats::add(&socks.datagrams_up, report.datagrams_up);
    ListenerStats::add(&socks.datagrams_down, report.datagrams_down);
}

/// The [`crate::stats::HANDSHAKE_FAILURES`] index of an error that ended a
/// session before its request.
fn handshake_failure(error: &socks5::Error) -> usize {
    use socks5::Error as E;
    match error {
        E::Version(_)
        | E::NotSocks5 { .. }
        | E::AuthVersion(_)
        | E::Command(_)
        | E::AddressType(_)
        | E::EmptyDomain => 0,
        E::NoAcceptableMethod => 1,
        E::AuthFailed => 2,
        E::Timeout { .. } => 3,
        E::Closed { .. } | E::Io(_) => 4,
        E::Cancelled { .. } => 5,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_connections_fit_the_open_file_limit() {
        assert_eq!(connections_for_fd_limit(1024, 0), 480);
        assert_eq!(connections_for_fd_limit(10, 0), 1);
        assert_eq!(connections_for_fd_limit(u64::MAX, 0), 65_536);
        // 16 workers, two listeners: 16 × (4 + 2) descriptors more are kept aside.
        assert_eq!(connections_for_fd_limit(1024, 96), 432);
        assert_eq!(connections_for_fd_limit(u64::MAX, 96), 65_536);
    }

    fn with_delay(delay: &str) -> anyhow::Result<Socks5Config> {
        let text = format!("bind = \"127.0.0.1:0\"\nhappy_eyeballs_delay = {delay}\n");
        let config: Socks5Config = toml::from_str(&text)?;
        config.prepare(&[])?;
        Ok(config)
    }

    #[test]
    fn happy_eyeballs_delay_is_off_or_10ms_to_30days() {
        let default: Socks5Config = toml::from_str("bind = \"127.0.0.1:0\"").unwrap();
        assert_eq!(default.happy_eyeballs_delay, Duration::from_millis(250));
        for ok in ["\"0s\"", "\"10ms\"", "\"250ms\"", "\"30days\""] {
            assert!(with_delay(ok).is_ok(), "{ok}");
        }
        for bad in ["\"9ms 999us\"", "\"1ns\"", "\"30days 1ns\""] {
            let message = format!("{:#}", with_delay(bad).unwrap_err());
            assert!(
                message.contains("happy_eyeballs_delay") && message.contains("or 10ms to 30days"),
                "{bad}: {message}"
            );
        }
    }

    fn validated(extra: &str) -> anyhow::Result<Socks5Config> {
        let text = format!("bind = \"127.0.0.1:0\"\n{extra}\n");
        let config: Socks5Config = toml::from_str(&text)?;
        config.prepare(&[])?;
        Ok(config)
    }

    #[test]
    fn via_is_checked_on_the_listener_and_on_allow_rules() {
        let config = validated("via = \"socks5://alice:pw@127.0.0.1:1080\"").unwrap();
        assert_eq!(
            config.via().unwrap().to_string(),
            "socks5://alice@127.0.0.1:1080"
        );
        assert_eq!(validated("").unwrap().via().unwrap(), socks5::Via::Direct);
        let rule = "[[rules]]\naction = \"allow\"\ndomains = [\"*.internal\"]\nvia = \"direct\"";
        let config = validated(&format!("via = \"http://proxy:3128\"\n{rule}")).unwrap();
        assert_eq!(
            config.rules().unwrap().rules[0].via,
            Some(socks5::Via::Direct)
        );
        for (extra, key) in [
            ("via = \"socks5://alice:hunter2@proxy\"", "via:"),
            ("via = \"ftp://proxy:21\"", "via:"),
            (
                "[[rules]]\naction = \"allow\"\nvia = \"socks5://alice:hunter2@h:0\"",
                "rules.via: rules[0]",
            ),
            (
                "[[rules]]\naction = \"deny\"\nvia = \"direct\"",
                "rules.via: rules[0]: a deny rule",
            ),
        ] {
            let message = format!("{:#}", validated(extra).unwrap_err());
            assert!(message.contains(key), "{extra}: {message}");
            assert!(!message.contains("hunter2"), "{extra}: {message}");
        }
    }

    #[test]
    fn rule_users_must_be_configured_users_of_a_password_listener() {
        let alice = "auth = \"password\"\nusers = [{ username = \"alice\", password = \"pw\" }]";
        let rule = |users: &str| format!("[[rules]]\naction = \"deny\"\nusers = {users}");
        let config = validated(&format!("{alice}\n{}", rule("[\"alice\"]"))).unwrap();
        assert_eq!(config.rules().unwrap().rules[0].users, vec!["alice"]);
        let message = format!(
            "{:#}",
            validated(&format!("{alice}\n{}", rule("[\"bob\"]"))).unwrap_err()
        );
        assert!(
            message.contains("rules.users: rules[0]: \"bob\" is not a user"),
            "{message}"
        );
        let message = format!("{:#}", validated(&rule("[\"alice\"]")).unwrap_err());
        assert!(message.contains("auth = \"none\""), "{message}");
    }

    #[test]
    fn port_specs_parse_ports_and_ranges() {
        assert_eq!(PortSpec::One(443).range().unwrap(), 443..=443);
        assert_eq!(
            PortSpec::Text("8000-8999".into()).range().unwrap(),
            8000..=8999
        );
        assert!(PortSpec::Text("9-8".into()).range().is_err());
        assert!(PortSpec::Text("http".into()).range().is_err());
    }
}
