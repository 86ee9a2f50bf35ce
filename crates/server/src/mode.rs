//! What a mode is, for the registry: the traits a mode's config ([`ModeConfig`]), its
//! ready-to-run settings ([`ModeSettings`]) and its running service ([`Mode`]) implement,
//! and [`Common`], what every listener has. A leaf below the modes: it names only the
//! modules a mode's service is made of (stats, access log, sinks, PROXY protocol), so the
//! modes depend on it and the registry on the modes, never the other way.

use std::{future::Future, net::SocketAddr, path::Path, pin::Pin, sync::Arc, time::Duration};

use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    access_log::{self, AccessLog},
    proxy_protocol::{ProxyProtocol, ProxySettings},
    sinks::file::FileSink,
    stats::{ListenerStats, StatsKind},
};

/// The keys every mode has, and the mode's validation: what the registry asks of a mode's
/// config type.
pub(crate) trait ModeConfig: std::fmt::Debug + Send + Sync {
    /// The `name` key.
    fn name(&self) -> Option<&str>;
    /// The `bind` key.
    fn bind(&self) -> SocketAddr;
    /// The `max_connections_per_ip` key.
    fn max_connections_per_ip(&self) -> Option<usize>;
    /// The `proxy_protocol`, `proxy_protocol_from` and `proxy_protocol_timeout` keys.
    fn proxy_protocol(&self) -> (ProxyProtocol, &[IpNet], Duration);
    /// The file a sink of this listener writes, if any.
    fn sink_path(&self) -> Option<&Path> {
        None
    }
    /// The address a proxy listener binds, which no proxy listener may connect to; `None`
    /// for other modes.
    fn proxy_bind(&self) -> Option<SocketAddr> {
        None
    }
    /// What the listener's periodic `stats` line shows.
    fn stats_kind(&self) -> StatsKind {
        StatsKind::Sessions
    }
    /// Checks the mode's own keys and builds its ready-to-run settings, with the listener's
    /// [`Common`] part (named `name`, counting in `stats`). `worker_fds` are the descriptors
    /// the `[server] workers` hold (see [`crate::workers::descriptors`]).
    ///
    /// # Errors
    ///
    /// An error naming the key at fault.
    fn prepare(
        &self,
        name: String,
        stats: Arc<ListenerStats>,
        proxies: &[SocketAddr],
        worker_fds: u64,
    ) -> anyhow::Result<(Common, Arc<dyn ModeSettings>)>;
}

/// What [`ModeSettings::build`] gets besides the settings.
pub(crate) struct BuildContext<'a> {
    /// The listener's name.
    pub(crate) name: &'a str,
    /// Its counters.
    pub(crate) stats: Arc<ListenerStats>,
    /// The file sinks running, to share one for the same file.
    pub(crate) sinks: &'a [Arc<FileSink>],
    /// The listener's access log, if it has one.
    pub(crate) access_log: Option<access_log::Sink>,
}

/// The future of [`ModeSettings::build`].
pub(crate) type BuildFuture<'a> =
    Pin<Box<dyn Future<Output = anyhow::Result<Service>> + Send + 'a>>;

/// A mode's ready-to-run settings, as its [`ModeConfig::prepare`] made them.
pub(crate) trait ModeSettings: std::fmt::Debug + Send + Sync {
    /// Builds the running service (opening what it needs: a sink's file, a NATS client).
    fn build<'a>(&'a self, context: BuildContext<'a>) -> BuildFuture<'a>;
}

/// The future of [`Mode::handle`].
pub(crate) type HandleFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A running mode, shared by the connections of one listener: it serves them, and counts
/// and logs them in the listener's [`ListenerStats`].
pub(crate) trait Mode: Send + Sync {
    /// Serves one accepted connection until it ends.
    fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> HandleFuture<'_>;

    /// The access log of this service, if it has one.
    fn access_log(&self) -> Option<Arc<AccessLog>>;

    /// The file sink of this service, if it has one.
    fn sink(&self) -> Option<Arc<FileSink>> {
        None
    }
}

/// A running mode, as the listeners hold it.
pub(crate) type Service = Arc<dyn Mode>;

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
    /// Serve the connections on the shared runtime even with `[server] workers`: crc-tcp with
    /// the `nats` handler, whose every frame goes to the NATS client's task there (on a
    /// worker, each batch and each PubAck would wake the other thread).
    pub shared_runtime: bool,
}
