//! The `server` binary's library: configuration, the mode registry, the
//! listeners and graceful shutdown. [`Server::bind`] then [`Server::run`]
//! (or [`run`]) starts every listener of a [`Config`] in-process, which is
//! how the integration tests drive it.
//!
//! [`Server::run_reloading`] also applies a new config on each SIGHUP (see its docs).
//!
//! Modules: [`config`] (TOML, validated once into ready-to-run settings before anything
//! binds: at start, by `--check-config` and on reload), [`registry`]
//! (one variant per mode), `listener` (bind, accept, connection limits),
//! [`modes`] (`crc-tcp`, `socks5`), [`sinks`] (the file sink), [`shutdown`]
//! (signals), [`proxy_protocol`] (whom to trust for a PROXY protocol header, and reading it),
//! [`admin`] (the `[admin]` HTTP endpoint), [`metrics`] (what its `/metrics` shows) and
//! [`access_log`] (the per-listener JSON lines).
//! Left out on purpose: wire formats, which live in `proto`, `socks5` and `proxy-header`.

pub mod access_log;
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
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

use crate::{
    listener::{Generation, Stops},
    registry::{Common, Service},
    sinks::file::FileSink,
};
use access_log::AccessLog;

/// Every listener of a config, bound and ready to serve.
pub struct Server {
    listeners: Vec<Bound>,
    drain_timeout: std::time::Duration,
    stats_interval: std::time::Duration,
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
        let mut listeners = Vec::with_capacity(ready.len());
        let (mut sinks, mut logs) = (Vec::new(), Vec::new());
        for prepared in ready.iter() {
            let common = prepared.common.clone();
            let service = prepared.build(&sinks, &logs)?;
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
        {
            let mut files = state.files.lock().await;
            files.sinks.close_all().await;
            files.logs.close_all().await;
        }
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

/// How long shutdown waits for the connections it ended after the drain timeout to go.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// The longest a reload waits for the config file (and its `users_file`) to be read: a
/// file that never answers (a FIFO, a hung network file system) fails the reload instead
/// of stopping the server's reloads for good.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One `stats` line per listener running.
fn log_stats(listeners: &metrics::Listeners) {
    let listeners = listeners
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for entry in listeners {
        entry.stats.log(&entry.name, entry.mode);
    }
}

/// A listener being served.
struct Live {
    /// Its `bind`, as configured (port 0 included).
    bind: SocketAddr,
    /// The settings new connections get.
    current: watch::Sender<Arc<Generation>>,
    stops: Stops,
    accept: JoinHandle<()>,
}

/// What generations share and the last to go closes: file sinks and access logs.
trait Shareable: Send + Sync + 'static {
    fn shut(&self) -> impl Future<Output = ()> + Send;
}

impl Shareable for FileSink {
    fn shut(&self) -> impl Future<Output = ()> + Send {
        self.close()
    }
}

impl Shareable for AccessLog {
    fn shut(&self) -> impl Future<Output = ()> + Send {
        self.close()
    }
}

/// The file sinks (or access logs) open, each with the number of generations (see
/// [`Generation`]) using it: a reload that keeps a file shares it, and it is closed
/// (written, synced, unlocked) once no generation uses it, or at shutdown.
struct Shared<T> {
    open: Vec<(Arc<T>, usize)>,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self { open: Vec::new() }
    }
}

impl<T: Shareable> Shared<T> {
    fn running(&self) -> Vec<Arc<T>> {
        self.open.iter().map(|(item, _)| Arc::clone(item)).collect()
    }

    fn hold(&mut self, item: Arc<T>) {
        match self.open.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &item)) {
            Some((_, users)) => *users += 1,
            None => self.open.push((item, 1)),
        }
    }

    /// One user fewer; closes it when that was the last.
    async fn release(&mut self, item: &Arc<T>) {
        let Some(index) = self.open.iter().position(|(s, _)| Arc::ptr_eq(s, item)) else {
            return; // closed at shutdown already
        };
        if let Some((_, users)) = self.open.get_mut(index) {
            *users = users.saturating_sub(1);
            if *users == 0 {
                let (item, _) = self.open.swap_remove(index);
                item.shut().await;
            }
        }
    }

    async fn close_all(&mut self) {
        for (item, _) in std::mem::take(&mut self.open) {
            item.shut().await;
        }
    }
}

/// The file sinks and access logs open.
#[derive(Default)]
struct Files {
    sinks: Shared<FileSink>,
    logs: Shared<AccessLog>,
}

impl Files {
    fn hold(&mut self, service: &Service) {
        if let Some(sink) = service.sink() {
            self.sinks.hold(sink);
        }
        if let Some(log) = service.access_log() {
            self.logs.hold(log);
        }
    }

    async fn release(&mut self, service: &Service) {
        if let Some(sink) = service.sink() {
            self.sinks.release(&sink).await;
        }
        if let Some(log) = service.access_log() {
            self.logs.release(&log).await;
        }
    }
}

/// The server while it serves: its listeners and what a reload changes.
struct Running {
    live: Vec<Live>,
    /// Every connection of every listener, for the drain at shutdown.
    tasks: TaskTracker,
    /// Generations and listeners a reload retired, finishing in the background (aborted
    /// at the end of shutdown).
    background: JoinSet<()>,
    /// The `kill` of every listener whose connections may still run (those removed by a
    /// reload included, until their drain ends).
    kills: Vec<CancellationToken>,
    shutdown: CancellationToken,
    files: Arc<tokio::sync::Mutex<Files>>,
    drain_timeout: Duration,
    stats_interval: Duration,
    admin_bind: Option<SocketAddr>,
    metric_listeners: metrics::Listeners,
}

/// A listener of the new config and what it becomes.
enum Plan {
    /// It keeps the socket of `live[index]`.
    Keep(usize),
    /// It binds a new socket.
    Start(TcpListener, SocketAddr),
}

impl Running {
    /// Starts accepting on `listener` with `generation`.
    fn start(&mut self, bind: SocketAddr, generation: Arc<Generation>, listener: TcpListener) {
        let stops = Stops {
            stop: self.shutdown.child_token(),
            kill: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        self.kills.retain(|kill| !kill.is_cancelled());
        self.kills.push(stops.kill.clone());
        let (current, receiver) = watch::channel(generation);
        let accept = tokio::spawn(listener::accept_loop(
            listener,
            receiver,
            stops.clone(),
            self.tasks.clone(),
        ));
        self.live.push(Live {
            bind,
            current,
            stops,
            accept,
        });
    }

    /// Reopens the access logs (for logrotate), then re-reads the config and applies it, or
    /// keeps the running one and says why.
    async fn reload(&mut self, source: &ConfigSource, reloads: &metrics::Reloads) {
        for log in self.files.lock().await.logs.running() {
            log.reopen();
        }
        let path = match source {
            ConfigSource::File(path) => path,
            ConfigSource::Embedded => {
                info!(
                    "reload requested (SIGHUP), but the server runs the embedded default config: there is no file to re-read, nothing changes"
                );
                return;
            }
        };
        info!(config = %path.display(), "reload requested (SIGHUP): reading the config");
        while self.background.try_join_next().is_some() {}
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Config::load(&path))
        };
        let applied = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(Ok(config))) => self.apply(&config).await,
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(panicked)) => Err(anyhow::anyhow!("reading the config failed: {panicked}")),
            Err(_) => Err(anyhow::anyhow!(
                "{}: not read within {READ_TIMEOUT:?}",
                path.display()
            )),
        };
        match applied {
            Ok(()) => {
                reloads.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                reloads.error.fetch_add(1, Ordering::Relaxed);
                error!(
                    error = format!("{error:#}"),
                    "reload failed: the running config stays"
                );
            }
        }
    }

    /// Applies a validated config: binds what it adds and opens its new sinks (any failure
    /// changes nothing), then switches every listener.
    async fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let ready = config.ready()?;
        // Which running listener each new one is: the same configured `bind` (and, for port 0,
        // the same name), so that its socket stays open and no connect is refused.
        let mut taken = vec![false; self.live.len()];
        let mut plans = Vec::with_capacity(ready.len());
        for prepared in ready.iter() {
            let common = &prepared.common;
            let keep = self.live.iter().enumerate().position(|(index, live)| {
                !taken.get(index).copied().unwrap_or(true)
                    && live.bind == common.bind
                    && (common.bind.port() != 0 || live.current.borrow().common.name == common.name)
            });
            plans.push(match keep {
                Some(index) => {
                    if let Some(taken) = taken.get_mut(index) {
                        *taken = true;
                    }
                    Plan::Keep(index)
                }
                None => {
                    let listener = listener::bind(common)?;
                    let addr = listener
                        .local_addr()
                        .with_context(|| format!("listener {}: no local address", common.name))?;
                    Plan::Start(listener, addr)
                }
            });
        }
        let mut generations = Vec::with_capacity(ready.len());
        {
            let mut files = self.files.lock().await;
            let running = files.sinks.running();
            let mut logs = files.logs.running();
            let mut built: Vec<Service> = Vec::with_capacity(ready.len());
            for (prepared, plan) in ready.iter().zip(&plans) {
                let mut prepared = prepared.clone();
                // A listener that keeps its name and mode keeps its counters.
                if let Plan::Keep(index) = plan
                    && let Some(live) = self.live.get(*index)
                {
                    let old = live.current.borrow();
                    if old.common.name == prepared.common.name && old.mode == prepared.mode {
                        prepared.common.stats = Arc::clone(&old.common.stats);
                    }
                }
                match prepared.build(&running, &logs) {
                    Ok(service) => {
                        // Two listeners of the new config may share a new access log.
                        if let Some(log) = service.access_log()
                            && !logs.iter().any(|l| Arc::ptr_eq(l, &log))
                        {
                            logs.push(log);
                        }
                        built.push(service.clone());
                        generations.push(Generation::new(prepared.common, prepared.mode, service));
                    }
                    Err(error) => {
                        // Close what this attempt opened; the running ones stay.
                        for sink in built.iter().filter_map(Service::sink) {
                            if !running.iter().any(|r| Arc::ptr_eq(r, &sink)) {
                                sink.close().await;
                            }
                        }
                        let running_logs = files.logs.running();
                        for log in logs {
                            if !running_logs.iter().any(|r| Arc::ptr_eq(r, &log)) {
                                log.close().await;
                            }
                        }
                        return Err(error.context(format!("listener {}", prepared.common.name)));
                    }
                }
            }
            for service in &built {
                files.hold(service);
            }
        }
        // Everything is ready: switch.
        let mut old_live: Vec<Option<Live>> = std::mem::take(&mut self.live)
            .into_iter()
            .map(Some)
            .collect();
        let (mut kept, mut started) = (0, 0);
        for ((plan, generation), prepared) in plans.into_iter().zip(generations).zip(ready.iter()) {
            match plan {
                Plan::Keep(index) => {
                    let Some(live) = old_live.get_mut(index).and_then(Option::take) else {
                        continue;
                    };
                    let old = live.current.send_replace(generation);
                    self.retire(old);
                    self.live.push(live);
                    kept += 1;
                }
                Plan::Start(listener, addr) => {
                    info!(listener = %prepared.common.name, mode = prepared.mode, %addr,
                        max_connections = prepared.common.max_connections, "listening");
                    self.start(prepared.common.bind, generation, listener);
                    started += 1;
                }
            }
        }
        let mut removed = 0;
        for live in old_live.into_iter().flatten() {
            self.remove(live);
            removed += 1;
        }
        *self
            .metric_listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner) = self
            .live
            .iter()
            .map(|live| {
                let current = live.current.borrow();
                metrics::ListenerEntry {
                    name: current.common.name.clone(),
                    mode: current.mode,
                    stats: Arc::clone(&current.common.stats),
                }
            })
            .collect();
        self.drain_timeout = config.server.drain_timeout;
        if config.server.stats_interval != self.stats_interval {
            warn!("[server] stats_interval changes at the next start; the running interval stays");
        }
        if config.admin.as_ref().map(|admin| admin.bind) != self.admin_bind {
            warn!("[admin] changes at the next start; the running admin endpoint stays");
        }
        info!(
            kept,
            started, removed, "config reloaded: new connections get the new settings"
        );
        Ok(())
    }

    /// Lets a generation's connections finish on their settings, then gives back its sink.
    fn retire(&mut self, generation: Arc<Generation>) {
        let files = Arc::clone(&self.files);
        self.background.spawn(async move {
            generation.tasks.close();
            generation.tasks.wait().await;
            files.lock().await.release(&generation.service).await;
        });
    }

    /// Stops a listener the new config does not have: its socket closes at once, its
    /// connections drain as on SIGTERM for up to `drain_timeout`, then end.
    fn remove(&mut self, live: Live) {
        let current = Arc::clone(&live.current.borrow());
        let (name, mode, stats) = (
            current.common.name.clone(),
            current.mode,
            Arc::clone(&current.common.stats),
        );
        info!(listener = %name, mode, drain_timeout = ?self.drain_timeout,
            "listener removed: no new connections, draining those in flight");
        live.stops.stop.cancel();
        self.retire(current);
        let drain = self.drain_timeout;
        self.background.spawn(async move {
            let _ = live.accept.await;
            live.stops.tasks.close();
            if tokio::time::timeout(drain, live.stops.tasks.wait())
                .await
                .is_err()
            {
                warn!(listener = %name, remaining = live.stops.tasks.len(),
                    "drain timeout passed; closing the removed listener's remaining connections");
            }
            // Ends what is left (nothing, after a clean drain) and marks the listener gone.
            live.stops.kill.cancel();
            stats.log(&name, mode);
        });
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
