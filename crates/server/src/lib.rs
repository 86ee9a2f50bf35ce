//! The `server` binary's library: configuration, the mode registry, the
//! listeners and graceful shutdown. [`Server::bind`] then [`Server::run`]
//! (or [`run`]) starts every listener of a [`Config`] in-process, which is
//! how the integration tests drive it.
//!
//! [`Server::run_reloading`] also applies a new config on each SIGHUP (see its docs).
//!
//! Modules: [`config`] (TOML, validated once into ready-to-run settings before anything
//! binds: at start, by `--check-config` and on reload), [`registry`]
//! (one variant per mode), `mode` (the traits a mode implements, and what every listener
//! has), `bounds` (the value checks every part of the config shares), `listener` (bind, accept, connection limits), `reload` (the listeners while they serve, and SIGHUP),
//! [`modes`] (`crc-tcp`, `socks5`), [`sinks`] (the file sink), [`shutdown`]
//! (signals), [`proxy_protocol`] (whom to trust for a PROXY protocol header, and reading it),
//! [`admin`] (the `[admin]` HTTP endpoint), [`metrics`] (what its `/metrics` shows) and
//! [`access_log`] (the per-listener JSON lines), `throttle` (one warning per interval).
//! Left out on purpose: wire formats, which live in `proto`, `socks5` and `proxy-header`.

pub mod access_log;
pub mod admin;
mod bounds;
pub mod config;
mod listener;
pub mod metrics;
mod mode;
pub mod modes;
pub mod proxy_protocol;
pub mod registry;
mod reload;
pub mod shutdown;
pub mod sinks;
pub mod stats;
mod throttle;
mod workers;

pub use admin::AdminConfig;
pub use config::Config;
pub use registry::MODES;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock, atomic::Ordering},
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::mpsc, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    listener::Generation,
    mode::{Common, Service},
    reload::{KILL_WAIT, Running, log_stats},
};

/// Every listener of a config, bound and ready to serve.
pub struct Server {
    listeners: Vec<Bound>,
    drain_timeout: std::time::Duration,
    stats_interval: std::time::Duration,
    /// The worker runtimes the connections run on (`None`: `workers = 0`).
    workers: Option<workers::Workers>,
    admin: Option<Admin>,
    admin_bind: Option<SocketAddr>,
    reloads: Arc<metrics::Reloads>,
    metric_listeners: metrics::Listeners,
}

/// The bound admin endpoint.
struct Admin {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<admin::State>,
}

struct Bound {
    common: Common,
    mode: &'static str,
    service: Service,
    listener: TcpListener,
    addr: SocketAddr,
}

/// Where a reload (SIGHUP) reads the config from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The `--config` file, read again on every reload.
    File(PathBuf),
    /// The embedded default config: a reload has nothing to re-read and changes nothing.
    Embedded,
}

impl Server {
    /// Builds every listener's service and binds every address, then the
    /// `[admin]` one if set; nothing is served until [`Server::run`]. Logs
    /// `listening` with each address.
    ///
    /// # Errors
    ///
    /// When a listener cannot be built or bound; the message names it.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let ready = config.ready()?;
        let count = config.server.worker_count();
        let workers = workers::Workers::start(count)
            .with_context(|| format!("cannot start {count} worker runtime(s)"))?;
        let mut listeners = Vec::with_capacity(ready.len());
        let (mut sinks, mut logs) = (Vec::new(), Vec::new());
        for prepared in ready.iter() {
            let common = prepared.common.clone();
            let service = prepared.build(&sinks, &logs).await?;
            sinks.extend(service.sink());
            logs.extend(service.access_log());
            let listener = listener::bind(&common)?;
            let addr = listener
                .local_addr()
                .with_context(|| format!("listener {}: no local address", common.name))?;
            let mode = prepared.mode;
            info!(listener = %common.name, mode, %addr, max_connections = common.max_connections, "listening");
            listeners.push(Bound {
                common,
                mode,
                service,
                listener,
                addr,
            });
        }
        let reloads = Arc::<metrics::Reloads>::default();
        let metric_listeners: metrics::Listeners = Arc::new(RwLock::new(
            listeners
                .iter()
                .map(|b| metrics::ListenerEntry {
                    name: b.common.name.clone(),
                    mode: b.mode,
                    stats: Arc::clone(&b.common.stats),
                })
                .collect(),
        ));
        let admin = match &config.admin {
            Some(admin_config) => {
                let (listener, addr) = admin::bind(admin_config).await?;
                let registry =
                    metrics::registry(Arc::clone(&metric_listeners), Arc::clone(&reloads));
                info!(%addr, paths = "/metrics /healthz /readyz", "admin listening");
                Some(Admin {
                    listener,
                    addr,
                    state: Arc::new(admin::State {
                        registry,
                        ready: false.into(),
                        listeners: Arc::clone(&metric_listeners),
                    }),
                })
            }
            None => None,
        };
        Ok(Self {
            listeners,
            drain_timeout: config.server.drain_timeout,
            stats_interval: config.server.stats_interval,
            workers,
            admin,
            admin_bind: config.admin.as_ref().map(|admin| admin.bind),
            reloads,
            metric_listeners,
        })
    }

    /// The bound address of the admin endpoint, if `[admin]` is set.
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|admin| admin.addr)
    }

    /// The name and bound address of each listener, in config order.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|b| (b.common.name.clone(), b.addr))
            .collect()
    }

    /// The reload counters (`netkit_config_reloads_total`).
    #[must_use]
    pub fn reloads(&self) -> Arc<metrics::Reloads> {
        Arc::clone(&self.reloads)
    }

    /// Serves until `shutdown` fires, then stops accepting, lets connections
    /// finish the frames in hand for up to the drain timeout, and flushes and
    /// syncs every file sink.
    ///
    /// # Errors
    ///
    /// Reserved for failures of the server as a whole; today it always ends `Ok`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (_none, hangups) = mpsc::channel(1);
        self.run_reloading(shutdown, hangups, ConfigSource::Embedded)
            .await
    }

    /// [`Server::run`], and a reload from `source` for each message on `hangups` (SIGHUP).
    ///
    /// A reload validates the whole new config first (as `--check-config` does) and binds
    /// the addresses it adds; if anything fails, the running config stays, the reason is
    /// logged at error level and `netkit_config_reloads_total{result="error"}` counts it.
    /// Otherwise (`result="ok"`) new connections get the new settings: a listener whose
    /// `bind` did not change keeps its socket (and its counters while its name and mode stay),
    /// connections already open keep the settings they started with, a listener added
    /// starts, and one removed stops accepting and drains as on SIGTERM (its connections get
    /// up to `drain_timeout`). A file sink on the same file is shared, never opened twice.
    ///
    /// # Errors
    ///
    /// Reserved for failures of the server as a whole; today it always ends `Ok`.
    pub async fn run_reloading(
        self,
        shutdown: CancellationToken,
        mut hangups: mpsc::Receiver<()>,
        source: ConfigSource,
    ) -> anyhow::Result<()> {
        let mut state = Running {
            live: Vec::with_capacity(self.listeners.len()),
            tasks: TaskTracker::new(),
            background: JoinSet::new(),
            kills: Vec::new(),
            shutdown: shutdown.clone(),
            files: Arc::default(),
            drain_timeout: self.drain_timeout,
            stats_interval: self.stats_interval,
            workers: self.workers,
            admin_bind: self.admin_bind,
            metric_listeners: Arc::clone(&self.metric_listeners),
        };
        for bound in self.listeners {
            state.start(
                bound.common.bind,
                Generation::new(bound.common, bound.mode, bound.service),
                bound.listener,
            );
        }
        {
            let mut files = state.files.lock().await;
            for live in &state.live {
                files.hold(&live.current.borrow().service);
            }
        }
        let ticker = (!self.stats_interval.is_zero()).then(|| {
            let (listeners, interval, stop) = (
                Arc::clone(&self.metric_listeners),
                self.stats_interval,
                shutdown.clone(),
            );
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => log_stats(&listeners),
                    }
                }
            })
        });
        // The admin endpoint outlives the drain, so that /readyz answers 503 during it.
        let admin_stop = CancellationToken::new();
        let admin = self.admin.map(|admin| {
            admin.state.ready.store(true, Ordering::Relaxed);
            let state = Arc::clone(&admin.state);
            let task = tokio::spawn(admin::serve(
                admin.listener,
                admin.state,
                admin_stop.clone(),
            ));
            (state, task)
        });
        let mut hangups_open = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                hangup = hangups.recv(), if hangups_open => match hangup {
                    Some(()) => state.reload(&source, &self.reloads).await,
                    None => hangups_open = false,
                },
            }
        }
        if let Some((state, _)) = &admin {
            state.ready.store(false, Ordering::Relaxed);
        }
        info!(drain_timeout = ?state.drain_timeout, "shutting down: no new connections, finishing those in flight");
        for live in std::mem::take(&mut state.live) {
            let _ = live.accept.await;
        }
        let tasks = &state.tasks;
        tasks.close();
        let deadline = tokio::time::Instant::now() + state.drain_timeout;
        if tokio::time::timeout_at(deadline, tasks.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = tasks.len(),
                "drain timeout passed; closing the remaining connections"
            );
            // Dropped where they stand, so none writes to a sink after it closes.
            state.kills.iter().for_each(CancellationToken::cancel);
            let _ = tokio::time::timeout(KILL_WAIT, tasks.wait()).await;
        }
        state.files.lock().await.close_all().await;
        // Retired generations whose connections were abandoned at the drain timeout.
        state.background.abort_all();
        if let Some(ticker) = ticker {
            let _ = ticker.await;
        }
        log_stats(&self.metric_listeners);
        admin_stop.cancel();
        if let Some((_, task)) = admin {
            let _ = task.await;
        }
        info!("stopped");
        Ok(())
    }
}

/// Binds every listener of `config` and serves until `shutdown` fires.
///
/// # Errors
///
/// See [`Server::bind`] and [`Server::run`].
pub async fn run(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Server::bind(config).await?.run(shutdown).await
}
