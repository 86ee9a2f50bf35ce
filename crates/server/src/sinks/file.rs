//! The file sink: appends every accepted frame, as received (header, payload,
//! trailer), to one file shared by all connections of a listener.
//!
//! Connections hand it whole batches (all the frames that arrived in one
//! read) and wait for the answer before they ack. One thread of its own owns
//! the file (so a blocking pool kept busy by slow name lookups cannot delay
//! it); it takes every batch waiting in its queue, writes them and, under
//! `sync = "always"`, syncs once for all of them (group commit). Under
//! `sync = "interval"` it syncs once `sync_interval` has passed since the
//! first unsynced write, however busy the queue is.
//!
//! A failed write is rolled back (the file is truncated to its length before
//! the batch), so the file never holds a frame that was not acked ok. When
//! the rollback itself fails, the file's state is unknown and the sink
//! answers every later batch with an error.
//!
//! On open the sink takes an exclusive lock on the file (a second sink on
//! the same file, in this process or another, refuses to start), cuts a
//! torn tail left by a crash after the last good frame, keeping the bytes
//! cut in a file beside it (see `repair`), and, when it created the file,
//! syncs the parent directory so the file's name survives a power loss.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{BufReader, IoSlice, Read, Seek, SeekFrom, Write},
    ops::Range,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use proto::{DEFAULT_MAX_BODY_SIZE, Decoded, HEADER_LEN, Limits, decode_frame, decode_header};
use serde::Deserialize;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::stats::DurationHistogram;

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

/// The most batches written (and synced) at once.
const MAX_BATCHES_PER_WRITE: usize = 1024;

/// Queue length between connections and the sink thread.
const QUEUE_LEN: usize = 1024;

/// The read buffer of the scan on open: small, so that walking over the
/// bodies of large frames before the tail reads little more than their
/// headers.
const SCAN_BUFFER_LEN: usize = 8 * 1024;

/// The scan on open checks the CRCs of the frames in this many bytes at the
/// end of the file, where a crash can leave a torn write; before it, frames
/// are walked by their headers. A restart thus reads about 64 MiB of a file
/// of any size, not all of it (a 2 GiB file took 4.9 s to open when every CRC
/// was checked).
const SCAN_TAIL_CHECKED: u64 = 64 << 20;

/// The largest frame whose CRC the scan on open checks (PROTOCOL.md's
/// default limit); larger ones are checked by their length only.
const MAX_CHECKED_FRAME: u64 = DEFAULT_MAX_BODY_SIZE as u64 + HEADER_LEN as u64;

/// Why a batch was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// Counters of the sink's work, for logs and tests.
#[derive(Debug, Default)]
struct Counters {
    /// Syncs of the file after writes (per batch under `always`, per
    /// interval under `interval`).
    syncs: AtomicU64,
    /// Syncs of the parent directory (once, when the sink created the file).
    dir_syncs: AtomicU64,
    /// Bytes cut from a torn tail on open.
    repaired_bytes: AtomicU64,
    /// How long each sync after writes took.
    sync_seconds: Arc<DurationHistogram>,
}

/// A handle to the thread that owns the file.
pub struct FileSink {
    path: PathBuf,
    policy: SyncPolicy,
    sync_interval: Duration,
    queue: mpsc::Sender<Request>,
    closed: CancellationToken,
    finished: Mutex<Option<oneshot::Receiver<()>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Opens (creating if needed) `path` for appending, locks it, cuts a
    /// torn tail, and starts the thread that owns it. It blocks while it
    /// reads the file through (to check its frames), so call it at start,
    /// before serving.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened, read, repaired or synced, or when
    /// another sink (another listener, another process) holds its lock; the
    /// message names the file.
    pub fn open(path: &Path, policy: SyncPolicy, sync_interval: Duration) -> anyhow::Result<Self> {
        Self::open_timed(path, policy, sync_interval, Arc::default())
    }

    /// [`FileSink::open`], timing each sync after writes into `sync_seconds`.
    ///
    /// # Errors
    ///
    /// As [`FileSink::open`].
    pub fn open_timed(
        path: &Path,
        policy: SyncPolicy,
        sync_interval: Duration,
        sync_seconds: Arc<DurationHistogram>,
    ) -> anyhow::Result<Self> {
        let shown = path.display();
        let (mut file, created) = open_file(path)?;
        let counters = Arc::new(Counters {
            sync_seconds,
            ..Counters::default()
        });
        let regular = file
            .metadata()
            .with_context(|| format!("cannot stat file sink {shown}"))?
            .is_file();
        // A device (`/dev/null`, say) has no length to repair or lock for.
        let len = if regular {
            lock(&file, path)?;
            let repaired = repair(&mut file, path)?;
            counters
                .repaired_bytes
                .store(repaired.cut, Ordering::Relaxed);
            repaired.len
        } else {
            0
        };
        if created && policy != SyncPolicy::Never {
            sync_parent(path)?;
            counters.dir_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let (queue, requests) = mpsc::channel(QUEUE_LEN);
        let closed = CancellationToken::new();
        let (finished_tx, finished) = oneshot::channel();
        let owner = Owner {
            path: shown.to_string(),
            file,
            len,
            policy,
            sync_interval,
            dirty_since: None,
            poisoned: None,
            counters: Arc::clone(&counters),
        };
        let stop = closed.clone();
        std::thread::Builder::new()
            .name("file-sink".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(owner.run(requests, stop)),
                    Err(error) => {
                        error!(path = %owner.path, %error, "file sink cannot start its runtime");
                    }
                }
                // The file (and its lock) is closed by now.
                let _ = finished_tx.send(());
            })
            .with_context(|| format!("cannot start the thread of file sink {shown}"))?;
        Ok(Self {
            path: path.to_path_buf(),
            policy,
            sync_interval,
            queue,
            closed,
            finished: Mutex::new(Some(finished)),
            counters,
        })
    }

    /// The sink's file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sync policy it was opened with.
    #[must_use]
    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// The `sync_interval` it was opened with.
    #[must_use]
    pub fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// How many times the file was synced after writes so far.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.counters.syncs.load(Ordering::Relaxed)
    }

    /// How many times the parent directory was synced (1 when the sink
    /// created the file and the policy syncs, else 0).
    #[must_use]
    pub fn dir_syncs(&self) -> u64 {
        self.counters.dir_syncs.load(Ordering::Relaxed)
    }

    /// How many bytes of a torn tail were cut on open.
    #[must_use]
    pub fn repaired_bytes(&self) -> u64 {
        self.counters.repaired_bytes.load(Ordering::Relaxed)
    }

    /// Appends `ranges` of `data` (whole frames) and returns once they are
    /// written, and synced if the policy is `always`.
    ///
    /// # Errors
    ///
    /// When the write or sync failed, an earlier rollback failed, or the
    /// sink is closed.
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

    /// Writes what is queued, syncs the file, stops the thread and closes
    /// the file (which releases its lock).
    pub async fn close(&self) {
        self.closed.cancel();
        let finished = self.finished.lock().ok().and_then(|mut f| f.take());
        if let Some(finished) = finished
            && finished.await.is_err()
        {
            error!(path = %self.path.display(), "file sink thread failed");
        }
    }
}

/// Opens `path` for reading and appending; says whether it was created.
fn open_file(path: &Path) -> anyhow::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    match options.clone().create_new(true).open(path) {
        Ok(file) => Ok((file, true)),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok((
            options
                .open(path)
                .with_context(|| format!("cannot open file sink {}", path.display()))?,
            false,
        )),
        Err(error) => {
            Err(error).with_context(|| format!("cannot open file sink {}", path.display()))
        }
    }
}

/// Takes the exclusive lock on the sink's file (flock(2): it conflicts with
/// any other open of the same file, in this process or another).
fn lock(file: &File, path: &Path) -> anyhow::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => {
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            bail!(
                "file sink {} ({}) is locked: another listener of this server or another \
                 process already writes to this file",
                path.display(),
                real.display()
            )
        }
        Err(TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock file sink {}", path.display()))
        }
    }
}

/// Syncs the directory that holds `path`, so a newly created file's name
/// is on disk before the first frame is acked.
fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync directory {}", parent.display()))
}

/// What [`repair`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Repaired {
    /// The file's length after the repair: the end of the last complete frame.
    len: u64,
    /// Bytes cut.
    cut: u64,
}

/// Where the complete frames of a sink file end, and why the rest is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scan {
    /// The end of the last complete frame.
    end: u64,
    /// The file's length.
    len: u64,
    /// Why the bytes from `end` on are not a frame, if there are any.
    reason: Option<String>,
}

/// Walks the frames of a sink file from the start: each header is checked
/// with [`decode_header`] (with no size limit, so frames stored under a
/// larger `max_frame_size` still count), and each frame of up to
/// [`MAX_CHECKED_FRAME`] bytes that ends in the last [`SCAN_TAIL_CHECKED`]
/// bytes of the file is read and its CRC checked with [`decode_frame`]
/// (others are checked by their header and length only). The walk stops
/// at a header that cannot start a frame, at a frame that the file's end
/// cuts short, and at a CRC that does not match: the sink stores only frames
/// whose CRC matched, so such a frame is a torn write (followed, in a file
/// that an older version appended to after a crash, by later frames).
fn scan(file: &mut File) -> std::io::Result<Scan> {
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_LEN, file);
    let limits = Limits {
        max_body_size: u32::MAX,
        allow_no_crc: true,
    };
    let mut end = 0u64;
    let mut head = [0u8; HEADER_LEN];
    let mut frame = Vec::new();
    let reason = loop {
        let left = len - end;
        if left == 0 {
            break None;
        }
        if left < HEADER_LEN as u64 {
            break Some(format!("a header cut short ({left} of {HEADER_LEN} bytes)"));
        }
        reader.read_exact(&mut head)?;
        let header = match decode_header(&head, &limits) {
            Ok(Decoded::Done(header, _)) => header,
            Ok(Decoded::NeedMore(_)) => break Some("a header cut short".to_owned()),
            Err(error) => break Some(format!("a header that cannot start a frame: {error}")),
        };
        let frame_len = header.frame_len() as u64;
        if left < frame_len {
            break Some(format!("a frame cut short ({left} of {frame_len} bytes)"));
        }
        let in_tail = end + frame_len > len.saturating_sub(SCAN_TAIL_CHECKED);
        if in_tail && frame_len <= MAX_CHECKED_FRAME {
            frame.clear();
            frame.extend_from_slice(&head);
            frame.resize(header.frame_len(), 0);
            reader.read_exact(frame.get_mut(HEADER_LEN..).unwrap_or_default())?;
            if !matches!(decode_frame(&frame, &limits), Ok(Decoded::Done(f, _)) if f.crc_ok()) {
                break Some(format!(
                    "a frame whose CRC does not match ({frame_len} bytes)"
                ));
            }
        } else {
            reader.seek_relative(i64::from(header.body_size))?;
        }
        end += frame_len;
    };
    Ok(Scan { end, len, reason })
}

/// Cuts the file after its last complete frame (see [`scan`]), so that frames
/// appended from now on follow a readable file, and syncs the cut. The bytes
/// cut are first copied to a file beside it ([`keep_tail`]): a tear in the
/// middle of a file written by an older version, with frames after it,
/// loses nothing for good. Logs at warn what was cut and where it went.
fn repair(file: &mut File, path: &Path) -> anyhow::Result<Repaired> {
    let shown = path.display();
    let found = scan(file).with_context(|| format!("cannot read file sink {shown}"))?;
    let cut = found.len - found.end;
    if let Some(reason) = &found.reason {
        let kept = keep_tail(file, path, found.end)?;
        warn!(
            path = %shown,
            offset = found.end,
            bytes = cut,
            reason = %reason,
            kept_in = %kept.display(),
            "file sink: cutting a torn tail after the last complete frame"
        );
        file.set_len(found.end)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot cut the torn tail of file sink {shown}"))?;
    }
    Ok(Repaired {
        len: found.end,
        cut,
    })
}

/// The most `PATH.torn-OFFSET.N` names tried for one tail.
const MAX_TAIL_FILES: u32 = 1000;

/// Copies the file from `offset` to its end into a new file
/// `PATH.torn-OFFSET` (or `PATH.torn-OFFSET.N` if that exists), synced with
/// its directory before the caller cuts; returns its path.
fn keep_tail(file: &mut File, path: &Path, offset: u64) -> anyhow::Result<PathBuf> {
    let shown = path.display();
    let base = format!("{}.torn-{offset}", path.display());
    let mut created = None;
    for n in 0..MAX_TAIL_FILES {
        let name = if n == 0 {
            PathBuf::from(&base)
        } else {
            PathBuf::from(format!("{base}.{n}"))
        };
        match OpenOptions::new().write(true).create_new(true).open(&name) {
            Ok(out) => {
                created = Some((name, out));
                break;
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "cannot keep the torn tail of file sink {shown} in {}",
                        name.display()
                    )
                });
            }
        }
    }
    let Some((name, mut out)) = created else {
        bail!(
            "cannot keep the torn tail of file sink {shown}: {base} and {MAX_TAIL_FILES} more names exist"
        );
    };
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| std::io::copy(file, &mut out))
        .and_then(|_| out.sync_all())
        .with_context(|| {
            format!(
                "cannot keep the torn tail of file sink {shown} in {}",
                name.display()
            )
        })?;
    sync_parent(&name)?;
    Ok(name)
}

/// What the owner thread needs of its file (a trait so that tests can make
/// a write and its rollback fail).
trait Storage: Send + 'static {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
    fn sync_data(&mut self) -> std::io::Result<()>;
    fn sync_all(&mut self) -> std::io::Result<()>;
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
}

impl Storage for File {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        Write::write_vectored(self, bufs)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> std::io::Result<()> {
        File::sync_all(self)
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)
    }
}

struct Owner<S> {
    path: String,
    file: S,
    len: u64,
    policy: SyncPolicy,
    sync_interval: Duration,
    /// When the oldest write not yet synced was made (`interval` only).
    dirty_since: Option<Instant>,
    /// Why the file's state is unknown: a rollback failed.
    poisoned: Option<String>,
    counters: Arc<Counters>,
}

impl<S: Storage> Owner<S> {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>, closed: CancellationToken) {
        let mut batch = Vec::new();
        loop {
            let due = self.sync_due();
            tokio::select! {
                biased;
                count = requests.recv_many(&mut batch, MAX_BATCHES_PER_WRITE) => {
                    if count == 0 { break; }
                    self.write(std::mem::take(&mut batch));
                    // Under continuous load this arm always wins the biased
                    // select, so the interval sync is checked here too.
                    if self.sync_due().is_some_and(|due| due <= Instant::now()) {
                        self.interval_sync();
                    }
                }
                () = closed.cancelled() => {
                    requests.close();
                    while requests.recv_many(&mut batch, MAX_BATCHES_PER_WRITE).await > 0 {
                        self.write(std::mem::take(&mut batch));
                    }
                    break;
                }
                () = sleep_until(due), if due.is_some() => self.interval_sync(),
            }
        }
        match self.file.sync_all() {
            Ok(()) => info!(path = %self.path, bytes = self.len, "file sink closed and synced"),
            Err(reason) => error!(path = %self.path, %reason, "file sink final sync failed"),
        }
    }

    /// When the next interval sync is due, if one is (none for an interval
    /// too long to add to a clock reading).
    fn sync_due(&self) -> Option<Instant> {
        self.dirty_since
            .and_then(|since| since.checked_add(self.sync_interval))
    }

    fn interval_sync(&mut self) {
        let started = Instant::now();
        let synced = self.file.sync_data();
        self.counters.sync_seconds.observe(started.elapsed());
        if let Err(reason) = synced {
            error!(path = %self.path, %reason, "file sink sync failed");
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.dirty_since = None;
    }

    /// Writes every request of `batch`, syncs per the policy, and answers each.
    fn write(&mut self, batch: Vec<Request>) {
        let result = match &self.poisoned {
            Some(reason) => Err(reason.clone()),
            None => self.write_batch(&batch),
        };
        let result = result.map_err(|reason| SinkError {
            path: self.path.clone(),
            reason,
        });
        for request in batch {
            let _ = request.done.send(result.clone());
        }
    }

    fn write_batch(&mut self, batch: &[Request]) -> Result<(), String> {
        let start = self.len;
        let mut slices: Vec<IoSlice<'_>> = batch
            .iter()
            .flat_map(|request| {
                request
                    .ranges
                    .iter()
                    .filter_map(|range| request.data.get(range.clone()))
            })
            .map(IoSlice::new)
            .collect();
        let written: u64 = slices.iter().map(|slice| slice.len() as u64).sum();
        let mut outcome = write_all_vectored(&mut self.file, &mut slices);
        if outcome.is_ok() && self.policy == SyncPolicy::Always {
            let started = Instant::now();
            outcome = self.file.sync_data();
            self.counters.sync_seconds.observe(started.elapsed());
            self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            Ok(()) => {
                self.len += written;
                if self.policy == SyncPolicy::Interval && self.dirty_since.is_none() {
                    self.dirty_since = Some(Instant::now());
                }
                debug!(path = %self.path, bytes = written, requests = batch.len(), "file sink wrote a batch");
                Ok(())
            }
            Err(reason) => {
                // Leave no partial batch behind: nothing of it will be acked ok.
                if let Err(rollback) = self.file.set_len(start) {
                    let state = format!(
                        "a failed write ({reason}) could not be rolled back ({rollback}); \
                         the file's state is unknown, so nothing more is stored"
                    );
                    error!(path = %self.path, %reason, %rollback, length = start, "file sink rollback failed; every later frame is answered with status 5");
                    self.poisoned = Some(state.clone());
                    return Err(state);
                }
                error!(path = %self.path, %reason, "file sink write failed; frames answered with status 5");
                Err(reason.to_string())
            }
        }
    }
}

/// The most slices given to one writev(2) (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Writes every byte of `slices`, at most [`MAX_SLICES`] per call.
fn write_all_vectored(
    file: &mut impl Storage,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let part = slices.get(..MAX_SLICES).unwrap_or(slices);
        match file.write_vectored(part) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Sleeps until `due`, or forever without one (the select arm is disabled then).
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose first write fails, and whose truncation fails when told to.
    struct Faulty {
        writes: usize,
        set_len_fails: bool,
        data: Vec<u8>,
    }

    impl Storage for Faulty {
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            self.writes += 1;
            if self.writes == 2 {
                return Err(std::io::Error::other("disk full"));
            }
            // The first call writes half of the first slice only.
            let buf = &bufs[0];
            let len = if self.writes == 1 {
                buf.len() / 2
            } else {
                buf.len()
            };
            self.data.extend_from_slice(&buf[..len]);
            Ok(len)
        }

        fn sync_data(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn sync_all(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn set_len(&mut self, len: u64) -> std::io::Result<()> {
            if self.set_len_fails {
                return Err(std::io::Error::other("i/o error"));
            }
            self.data.truncate(len as usize);
            Ok(())
        }
    }

    fn owner(set_len_fails: bool) -> Owner<Faulty> {
        Owner {
            path: "test.bin".into(),
            file: Faulty {
                writes: 0,
                set_len_fails,
                data: Vec::new(),
            },
            len: 0,
            policy: SyncPolicy::Always,
            sync_interval: Duration::from_secs(1),
            dirty_since: None,
            poisoned: None,
            counters: Arc::default(),
        }
    }

    /// Writes one request of `payload` and returns its answer.
    fn write(owner: &mut Owner<Faulty>, payload: &'static [u8]) -> Result<(), SinkError> {
        let (done, mut answer) = oneshot::channel();
        owner.write(vec![Request {
            data: Bytes::from_static(payload),
            ranges: std::iter::once(0..payload.len()).collect(),
            done,
        }]);
        answer.try_recv().expect("answered at once")
    }

    #[test]
    fn an_interval_too_long_for_the_clock_never_falls_due() {
        let mut owner = owner(false);
        owner.sync_interval = Duration::MAX;
        owner.dirty_since = Some(Instant::now());
        assert_eq!(owner.sync_due(), None);
    }

    #[test]
    fn a_rolled_back_write_lets_the_next_batch_through() {
        let mut owner = owner(false);
        assert!(write(&mut owner, b"first").is_err());
        assert_eq!(write(&mut owner, b"second"), Ok(()));
        assert_eq!(owner.file.data, b"second");
    }

    #[test]
    fn a_failed_rollback_stops_every_later_ok() {
        let mut owner = owner(true);
        let first = write(&mut owner, b"first").expect_err("the write failed");
        assert!(first.reason.contains("could not be rolled back"), "{first}");
        // The file holds half a batch: nothing after it may be acked ok.
        for _ in 0..3 {
            let later = write(&mut owner, b"later").expect_err("the sink is stopped");
            assert!(later.reason.contains("state is unknown"), "{later}");
        }
        assert_eq!(owner.file.data, b"fi");
    }
}
