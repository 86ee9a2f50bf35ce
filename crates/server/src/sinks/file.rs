//! The file sink: appends every accepted frame, as received (header, payload,
//! trailer), to one file shared by all connections of a listener.
//!
//! Connections hand it whole batches (all the frames that arrived in one
//! read) and wait for the answer before they ack. One task owns the file; it
//! takes every batch waiting in its queue, writes them with one blocking call
//! and, under `sync = "always"`, syncs once for all of them (group commit).
//! A failed write is rolled back (the file is truncated to its length before
//! the batch), so the file never holds a frame that was not acked ok.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    ops::Range,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use serde::Deserialize;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

/// When written frames are synced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// Sync before acking: an ok ack means the frame survives a power loss.
    #[default]
    Always,
    /// Sync every `sync_interval`: an ok ack means the frame is in the
    /// kernel's cache (it survives a crash of the server, not of the machine).
    Interval,
    /// Never sync explicitly (the kernel writes back on its own schedule).
    Never,
}

/// The most batches written by one blocking call.
const MAX_BATCHES_PER_WRITE: usize = 1024;

/// Queue length between connections and the sink task.
const QUEUE_LEN: usize = 1024;

/// Why a batch was not stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("file sink {path}: {reason}")]
pub struct SinkError {
    path: String,
    reason: String,
}

struct Request {
    data: Bytes,
    ranges: Vec<Range<usize>>,
    done: oneshot::Sender<Result<(), SinkError>>,
}

/// A handle to the task that owns the file.
pub struct FileSink {
    path: PathBuf,
    queue: mpsc::Sender<Request>,
    closed: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Opens (creating if needed) `path` for appending and starts the task
    /// that owns it. Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened; the message names it.
    pub fn open(path: &Path, policy: SyncPolicy, sync_interval: Duration) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open file sink {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat file sink {}", path.display()))?
            .len();
        let (queue, requests) = mpsc::channel(QUEUE_LEN);
        let closed = CancellationToken::new();
        let owner = Owner {
            path: path.display().to_string(),
            file: Some(file),
            len,
            policy,
            dirty: false,
        };
        let task = tokio::spawn(owner.run(requests, closed.clone(), sync_interval));
        Ok(Self {
            path: path.to_path_buf(),
            queue,
            closed,
            task: Mutex::new(Some(task)),
        })
    }

    /// The sink's file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `ranges` of `data` (whole frames) and returns once they are
    /// written, and synced if the policy is `always`.
    ///
    /// # Errors
    ///
    /// When the write or sync failed, or the sink is closed.
    pub async fn append(&self, data: Bytes, ranges: Vec<Range<usize>>) -> Result<(), SinkError> {
        let closed = || SinkError {
            path: self.path.display().to_string(),
            reason: "the sink is closed".into(),
        };
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Request { data, ranges, done })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Writes what is queued, syncs the file and stops the task.
    pub async fn close(&self) {
        self.closed.cancel();
        let task = self.task.lock().ok().and_then(|mut task| task.take());
        if let Some(task) = task
            && let Err(error) = task.await
        {
            error!(path = %self.path.display(), %error, "file sink task failed");
        }
    }
}

struct Owner {
    path: String,
    file: Option<File>,
    len: u64,
    policy: SyncPolicy,
    dirty: bool,
}

impl Owner {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        closed: CancellationToken,
        sync_interval: Duration,
    ) {
        let mut tick = tokio::time::interval(sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                biased;
                count = requests.recv_many(&mut batch, MAX_BATCHES_PER_WRITE) => {
                    if count == 0 { break; }
                    self.write(std::mem::take(&mut batch)).await;
                }
                () = closed.cancelled() => {
                    requests.close();
                    while requests.recv_many(&mut batch, MAX_BATCHES_PER_WRITE).await > 0 {
                        self.write(std::mem::take(&mut batch)).await;
                    }
                    break;
                }
                _ = tick.tick(), if self.policy == SyncPolicy::Interval && self.dirty => {
                    if let Err(reason) = self.blocking(|file| file.sync_data()).await {
                        error!(path = %self.path, %reason, "file sink sync failed");
                    }
                    self.dirty = false;
                }
            }
        }
        match self.blocking(|file| file.sync_all()).await {
            Ok(()) => info!(path = %self.path, bytes = self.len, "file sink closed and synced"),
            Err(reason) => error!(path = %self.path, %reason, "file sink final sync failed"),
        }
    }

    /// Writes every request of `batch`, syncs per the policy, and answers each.
    async fn write(&mut self, batch: Vec<Request>) {
        let (start, policy) = (self.len, self.policy);
        let mut chunks: Vec<Bytes> = Vec::new();
        for request in &batch {
            chunks.extend(
                request
                    .ranges
                    .iter()
                    .map(|range| request.data.slice(range.clone())),
            );
        }
        let written: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let result = self
            .blocking(move |file| {
                let outcome = chunks
                    .iter()
                    .try_for_each(|chunk| file.write_all(chunk))
                    .and_then(|()| {
                        if policy == SyncPolicy::Always {
                            file.sync_data()
                        } else {
                            Ok(())
                        }
                    });
                if outcome.is_err() {
                    // Leave no partial batch behind: nothing of it will be acked ok.
                    let _ = file.set_len(start);
                }
                outcome
            })
            .await;
        match &result {
            Ok(()) => {
                self.len += written;
                self.dirty = true;
                debug!(path = %self.path, bytes = written, requests = batch.len(), "file sink wrote a batch");
            }
            Err(reason) => {
                error!(path = %self.path, %reason, "file sink write failed; frames answered with status 5")
            }
        }
        let result = result.map_err(|reason| SinkError {
            path: self.path.clone(),
            reason,
        });
        for request in batch {
            let _ = request.done.send(result.clone());
        }
    }

    /// Runs `work` on the file in the blocking pool.
    async fn blocking(
        &mut self,
        work: impl FnOnce(&mut File) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), String> {
        let Some(mut file) = self.file.take() else {
            return Err("the file was lost after an earlier failure".into());
        };
        match tokio::task::spawn_blocking(move || {
            let outcome = work(&mut file);
            (file, outcome)
        })
        .await
        {
            Ok((file, outcome)) => {
                self.file = Some(file);
                outcome.map_err(|e| e.to_string())
            }
            Err(error) => Err(format!("the writer thread failed: {error}")),
        }
    }
}
