//! The `server` binary's library: configuration, the mode registry, the
//! listeners and graceful shutdown. [`Server::bind`] then [`Server::run`]
//! (or [`run`]) starts every listener of a [`Config`] in-process, which is
//! how the integration tests drive it.
//!
//! Modules: [`config`] (TOML, validated before anything binds), [`registry`]
//! (one variant per mode), `listener` (bind, accept, connection limits),
//! [`modes`] (`crc-tcp`, `socks5`), [`sinks`] (the file sink), [`shutdown`]
//! (signals), [`proxy_protocol`] (whom to trust for a PROXY protocol header, and reading it),
//! [`admin`] (the `[admin]` HTTP endpoint) and [`metrics`] (what its `/metrics` shows).
//! Left out on purpose: wire formats, which live in `proto`, `socks5` and `proxy-header`.

pub mod admin;
pub mod config;
mod listener;
pub mod metrics;
pub mod modes;
pub mod proxy_protocol;
pub mod registry;
pub mod shutdown;
pub mod sinks;
pub mod stats;

pub use admin::AdminConfig;
pub use config::Config;
pub use registry::MODES;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::registry::{Common, Service};

/// Every listener of a config, bound and ready to serve.
pub struct Server {
    listeners: Vec<Bound>,
    drain_timeout: std::time::Duration,
    stats_interval: std::time::Duration,
    admin: Option<Admin>,
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

impl Server {
    /// Builds every listener's service and binds every address, then the
    /// `[admin]` one if set; nothing is served until [`Server::run`]. Logs
    /// `listening` with each address.
    ///
    /// # Errors
    ///
    /// When a listener cannot be built or bound; the message names it.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let proxies: Vec<SocketAddr> = config
            .listeners
            .iter()
            .filter_map(registry::ListenerConfig::proxy_bind)
            .collect();
        for (index, listener_config) in config.listeners.iter().enumerate() {
            let (common, service) = listener_config.build(index, &proxies).await?;
            let listener = listener::bind(&common)?;
            let addr = listener
                .local_addr()
                .with_context(|| format!("listener {}: no local address", common.name))?;
            let mode = listener_config.mode();
            info!(listener = %common.name, mode, %addr, max_connections = common.max_connections, "listening");
            listeners.push(Bound {
                common,
                mode,
                service,
                listener,
                addr,
            });
        }
        let admin = match &config.admin {
            Some(admin_config) => {
                let (listener, addr) = admin::bind(admin_config).await?;
                let entries = listeners
                    .iter()
                    .map(|b| metrics::ListenerEntry {
                        name: b.common.name.clone(),
                        mode: b.mode,
                        stats: Arc::clone(&b.common.stats),
                    })
                    .collect();
                let registry = metrics::registry(entries, Arc::default());
                info!(%addr, paths = "/metrics /healthz /readyz", "admin listening");
                Some(Admin {
                    listener,
                    addr,
                    state: Arc::new(admin::State {
                        registry,
                        ready: false.into(),
                        listeners: listeners
                            .iter()
                            .map(|b| (b.common.name.clone(), Arc::clone(&b.common.stats)))
                            .collect(),
                    }),
                })
            }
            None => None,
        };
        Ok(Self {
            listeners,
            drain_timeout: config.server.drain_timeout,
            stats_interval: config.server.stats_interval,
            admin,
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

    /// Serves until `shutdown` fires, then stops accepting, lets connections
    /// finish the frames in hand for up to the drain timeout, and flushes and
    /// syncs every file sink.
    ///
    /// # Errors
    ///
    /// Reserved for failures of the server as a whole; today it always ends `Ok`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        let mut services = Vec::with_capacity(self.listeners.len());
        let stats: Vec<_> = self
            .listeners
            .iter()
            .map(|b| (b.common.name.clone(), b.mode, Arc::clone(&b.common.stats)))
            .collect();
        let ticker = (!self.stats_interval.is_zero()).then(|| {
            let (stats, interval, stop) = (stats.clone(), self.stats_interval, shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => stats.iter().for_each(|(name, mode, s)| s.log(name, mode)),
                    }
                }
            })
        });
        for bound in self.listeners {
            services.push(bound.service.clone());
            accept_loops.spawn(listener::accept_loop(
                bound.listener,
                bound.common,
                bound.mode,
                bound.service,
                shutdown.child_token(),
                tasks.clone(),
            ));
        }
        accept_loops.close();
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
        shutdown.cancelled().await;
        if let Some((state, _)) = &admin {
            state.ready.store(false, Ordering::Relaxed);
        }
        info!(drain_timeout = ?self.drain_timeout, "shutting down: no new connections, finishing those in flight");
        accept_loops.wait().await;
        tasks.close();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        if tokio::time::timeout_at(deadline, tasks.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = tasks.len(),
                "drain timeout passed; closing the remaining connections"
            );
        }
        for service in services {
            service.finish().await;
        }
        if let Some(ticker) = ticker {
            let _ = ticker.await;
        }
        stats.iter().for_each(|(name, mode, s)| s.log(name, mode));
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
