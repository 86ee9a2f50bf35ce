//! The server while it serves: its listeners (each a socket, an accept loop and the
//! [`Generation`] of settings new connections get), the file sinks and access logs the
//! generations share, and reload (SIGHUP): re-read, validate, bind what is new, switch.

use std::{
    net::SocketAddr,
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    sync::watch,
    task::{JoinHandle, JoinSet},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

use crate::{
    Config, ConfigSource,
    access_log::AccessLog,
    listener::{self, Generation, Stops},
    metrics,
    mode::Service,
    sinks::file::FileSink,
    workers::Workers,
};

/// How long shutdown waits for the connections it ended after the drain timeout to go.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(1);

/// The longest a reload waits for the config file (and its `users_file`) to be read: a
/// file that never answers (a FIFO, a hung network file system) fails the reload instead
/// of stopping the server's reloads for good.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One `stats` line per listener running.
pub(crate) fn log_stats(listeners: &metrics::Listeners) {
    let listeners = listeners
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for entry in listeners {
        entry.stats.log(&entry.name, entry.mode);
    }
}

/// A listener being served.
pub(crate) struct Live {
    /// Its `bind`, as configured (port 0 included).
    pub(crate) bind: SocketAddr,
    /// The settings new connections get.
    pub(crate) current: watch::Sender<Arc<Generation>>,
    pub(crate) stops: Stops,
    pub(crate) accept: JoinHandle<()>,
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
pub(crate) struct Files {
    sinks: Shared<FileSink>,
    logs: Shared<AccessLog>,
}

impl Files {
    /// Closes every sink and access log (at shutdown, after the drain).
    pub(crate) async fn close_all(&mut self) {
        self.sinks.close_all().await;
        self.logs.close_all().await;
    }

    pub(crate) fn hold(&mut self, service: &Service) {
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
pub(crate) struct Running {
    pub(crate) live: Vec<Live>,
    /// Every connection of every listener, for the drain at shutdown.
    pub(crate) tasks: TaskTracker,
    /// Generations and listeners a reload retired, finishing in the background (aborted
    /// at the end of shutdown).
    pub(crate) background: JoinSet<()>,
    /// The `kill` of every listener whose connections may still run (those removed by a
    /// reload included, until their drain ends).
    pub(crate) kills: Vec<CancellationToken>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) files: Arc<tokio::sync::Mutex<Files>>,
    pub(crate) drain_timeout: Duration,
    pub(crate) stats_interval: Duration,
    pub(crate) workers: Option<Workers>,
    pub(crate) admin_bind: Option<SocketAddr>,
    pub(crate) metric_listeners: metrics::Listeners,
}

/// Runs an accept loop on every worker runtime, each on a duplicate of `listener`'s socket
/// registered with that runtime's reactor: whichever worker accepts a connection serves it
/// there, so no connection is handed from one thread to another. The returned task ends when
/// every loop has ended.
fn accept_on_workers(
    workers: &Workers,
    listener: TcpListener,
    receiver: &watch::Receiver<Arc<Generation>>,
    stops: &Stops,
    tasks: &TaskTracker,
) -> JoinHandle<()> {
    let socket = match listener.into_std() {
        Ok(socket) => socket,
        Err(error) => {
            warn!(%error, "cannot take the listening socket out of the runtime; it stops");
            return tokio::spawn(async {});
        }
    };
    let loops: Vec<JoinHandle<()>> = workers
        .handles()
        .iter()
        .filter_map(|handle| {
            let socket = socket
                .try_clone()
                .map_err(|error| warn!(%error, "cannot duplicate the listening socket"))
                .ok()?;
            let (receiver, stops, tasks) = (receiver.clone(), stops.clone(), tasks.clone());
            Some(handle.spawn(async move {
                match TcpListener::from_std(socket) {
                    Ok(listener) => listener::accept_loop(listener, receiver, stops, tasks).await,
                    Err(error) => warn!(%error, "cannot register the listening socket"),
                }
            }))
        })
        .collect();
    tokio::spawn(async move {
        for accept in loops {
            let _ = accept.await;
        }
    })
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
    pub(crate) fn start(
        &mut self,
        bind: SocketAddr,
        generation: Arc<Generation>,
        listener: TcpListener,
    ) {
        let stops = Stops {
            stop: self.shutdown.child_token(),
            kill: CancellationToken::new(),
            tasks: TaskTracker::new(),
            logs: Arc::default(),
        };
        self.kills.retain(|kill| !kill.is_cancelled());
        self.kills.push(stops.kill.clone());
        // Where the listener accepts is chosen at its start; a reload keeps it.
        let workers = self
            .workers
            .as_ref()
            .filter(|_| !generation.common.shared_runtime);
        let (current, receiver) = watch::channel(generation);
        let accept = match workers {
            None => tokio::spawn(listener::accept_loop(
                listener,
                receiver,
                stops.clone(),
                self.tasks.clone(),
            )),
            Some(workers) => accept_on_workers(workers, listener, &receiver, &stops, &self.tasks),
        };
        self.live.push(Live {
            bind,
            current,
            stops,
            accept,
        });
    }

    /// Reopens the access logs (for logrotate), then re-reads the config and applies it, or
    /// keeps the running one and says why.
    pub(crate) async fn reload(&mut self, source: &ConfigSource, reloads: &metrics::Reloads) {
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
                match prepared.build(&running, &logs).await {
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
                        for sink in built.iter().filter_map(|service| service.sink()) {
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
        let workers = self.workers.as_ref().map_or(0, Workers::count);
        if config.server.worker_count() != workers {
            warn!(
                running = workers,
                "[server] workers changes at the next start; the running workers stay"
            );
        }
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
