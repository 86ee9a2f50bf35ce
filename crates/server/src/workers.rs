//! `[server] workers`: single-threaded runtimes that accept and serve the connections.
//!
//! The admin endpoint, reloads and the sinks run on the process's work-stealing runtime.
//! With `workers = N` (N ≥ 1), N threads each run a single-threaded runtime with an accept
//! loop of every listener (on a duplicate of its socket), and a connection lives wholly on
//! the worker that accepted it (its sockets, its timers, the tasks it spawns): no wake-up of
//! another thread per event, no task moving between threads. The price is the balance: a
//! connection stays on its thread, however busy that thread is. `workers = 0` accepts and
//! serves on the work-stealing runtime.

use std::{io, sync::Arc, time::Duration};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long [`Workers::start`] waits for each thread to run.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker runtimes; cloning shares them. The threads end when the last clone is dropped
/// (the tasks still on them are dropped, which closes their sockets).
#[derive(Clone)]
pub(crate) struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<Handle>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Workers {
    /// Starts `count` worker threads, each with a single-threaded runtime; `None` for 0.
    ///
    /// # Errors
    ///
    /// When a runtime or a thread cannot be created.
    pub(crate) fn start(count: usize) -> io::Result<Option<Self>> {
        if count == 0 {
            return Ok(None);
        }
        let stop = CancellationToken::new();
        // Any failure stops the workers started so far.
        let started_all = stop.clone().drop_guard();
        let mut handles = Vec::with_capacity(count);
        let (started, running) = std::sync::mpsc::channel();
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let runtime = Unstarted(Some(runtime));
            let (stop, started) = (stop.clone(), started.clone());
            std::thread::Builder::new()
                .name(format!("netkit-wk-{index}"))
                .spawn(move || {
                    let _ = started.send(());
                    runtime.run(stop);
                    debug!(worker = index, "worker stopped");
                })?;
        }
        // Every worker thread runs (and has its name) before the first listener is bound.
        for _ in 0..count {
            running.recv_timeout(START_TIMEOUT).map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "a worker thread did not start")
            })?;
        }
        started_all.disarm();
        debug!(workers = count, "worker runtimes started");
        Ok(Some(Self {
            inner: Arc::new(Inner { handles, stop }),
        }))
    }

    /// The worker runtimes.
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.inner.handles
    }

    /// How many worker runtimes there are.
    pub(crate) fn count(&self) -> usize {
        self.inner.handles.len()
    }
}

/// A worker's runtime on its way to its thread. Dropped there after it ran; dropped where
/// it was built (inside the caller's runtime, when the thread cannot start), it shuts down
/// without waiting, since a runtime dropped inside another panics.
struct Unstarted(Option<tokio::runtime::Runtime>);

impl Unstarted {
    /// Runs the runtime on this thread until `stop`, then drops it here.
    fn run(mut self, stop: CancellationToken) {
        if let Some(runtime) = self.0.take() {
            runtime.block_on(stop.cancelled());
        }
    }
}

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The descriptors a single-threaded runtime holds: its epoll instance, its waker, and
/// those of its signal and process drivers.
const RUNTIME_FDS: u64 = 4;

/// The descriptors `workers` worker runtimes hold with `listeners` listeners: each its own,
/// and a duplicate of every listening socket.
pub(crate) fn descriptors(workers: usize, listeners: usize) -> u64 {
    (workers as u64).saturating_mul(RUNTIME_FDS.saturating_add(listeners as u64))
}

/// The default of `workers`: one per CPU this process may run on.
pub(crate) fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
