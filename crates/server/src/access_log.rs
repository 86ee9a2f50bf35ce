//! `access_log = "PATH"`: one JSON line per finished session (socks5) or connection
//! (crc-tcp), appended to PATH by a background thread. The data path only hands a line to a
//! bounded queue and never waits: when the queue is full the line is dropped, counted
//! (`netkit_access_log_dropped_total`) and reported in a warning (at most one per 10 s).
//! SIGHUP reopens the file, so that logrotate can move it away.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use serde::Serialize;
use tracing::{error, warn};

use crate::{stats::ListenerStats, throttle::Throttle};

/// Lines queued for the writer at most; more are dropped, not waited for.
pub const QUEUE_LEN: usize = 8192;

/// How long closing waits for the writer to write what is queued.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// An open access log: the queue to its writer thread.
#[derive(Debug)]
pub struct AccessLog {
    path: PathBuf,
    queue: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    dropped_log: Throttle,
}

#[derive(Debug)]
enum Message {
    Line(Vec<u8>),
    /// Look at the reopen flag now.
    Wake,
    /// Write what is queued, flush and stop.
    Close,
}

impl AccessLog {
    /// Opens (creating if needed) `path` for appending and starts its writer thread.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or the thread cannot start; the message names the file.
    pub fn open(path: &Path) -> anyhow::Result<Arc<Self>> {
        let file = open(path)?;
        let (queue, lines) = sync_channel(QUEUE_LEN);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            reopen: Arc::clone(&reopen),
            failed: false,
        };
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(&lines))
            .with_context(|| {
                format!("access_log: cannot start the writer of {}", path.display())
            })?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            queue,
            reopen,
            writer: std::sync::Mutex::new(Some(writer)),
            dropped_log: Throttle::default(),
        }))
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one entry; never waits. A full queue drops it, counted in `stats`.
    pub(crate) fn write(&self, entry: &impl Serialize, listener: &str, stats: &ListenerStats) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return; // plain structs of strings and numbers always serialize
        };
        line.push(b'\n');
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                ListenerStats::add(&stats.access_log_dropped, 1);
                if let Some(dropped) = self.dropped_log.note() {
                    warn!(listener, path = %self.path.display(), dropped,
                        "access log lines dropped: the writer falls behind \
                         (dropped counts every line since the last such warning)");
                }
            }
        }
    }

    /// Has the writer close the file and open PATH again (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // A full queue wakes the writer anyway: it checks the flag before each line.
        let _ = self.queue.try_send(Message::Wake);
    }

    /// Writes what is queued, flushes, and stops the writer; waits for it, up to
    /// [`CLOSE_TIMEOUT`] (a writer stuck on a hung disk is left behind, with a warning).
    pub async fn close(&self) {
        let queue = self.queue.clone();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let closed = tokio::task::spawn_blocking(move || {
            let _ = queue.send(Message::Close);
            if let Some(writer) = writer {
                let _ = writer.join();
            }
        });
        if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
            warn!(path = %self.path.display(), "the access log writer did not finish within {CLOSE_TIMEOUT:?}; lines it holds may be lost");
        }
    }
}

fn open(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("access_log: cannot open {}", path.display()))
}

/// The thread that owns the file.
struct Writer {
    path: PathBuf,
    file: BufWriter<File>,
    reopen: Arc<AtomicBool>,
    /// A write failed since the file was (re)opened (logged once).
    failed: bool,
}

impl Writer {
    fn run(mut self, lines: &Receiver<Message>) {
        // Blocks for the first message, then takes every queued one and flushes once.
        while let Ok(mut message) = lines.recv() {
            loop {
                if self.reopen.swap(false, Ordering::AcqRel) {
                    self.reopen_file();
                }
                match message {
                    Message::Line(line) => self.put(&line),
                    Message::Wake => {}
                    Message::Close => {
                        self.flush();
                        return;
                    }
                }
                match lines.try_recv() {
                    Ok(next) => message = next,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
            }
            self.flush();
        }
        self.flush();
    }

    fn put(&mut self, line: &[u8]) {
        if let Err(error) = self.file.write_all(line) {
            self.report(&error);
        }
    }

    fn flush(&mut self) {
        if let Err(error) = self.file.flush() {
            self.report(&error);
        }
    }

    fn report(&mut self, error: &std::io::Error) {
        if !self.failed {
            self.failed = true;
            error!(path = %self.path.display(), %error, "access log write failed; lines are lost until it is reopened (SIGHUP)");
        }
    }

    fn reopen_file(&mut self) {
        self.flush();
        match open(&self.path) {
            Ok(file) => {
                self.file = BufWriter::new(file);
                self.failed = false;
            }
            Err(error) => error!(
                error = format!("{error:#}"),
                "access log not reopened; writing to the file open before"
            ),
        }
    }
}

/// The current time as RFC 3339 in UTC, with milliseconds.
pub(crate) fn now() -> String {
    humantime_serde::re::humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The access logs a service writes to, with the listener's name.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub(crate) log: Arc<AccessLog>,
    pub(crate) listener: Arc<str>,
    pub(crate) stats: Arc<ListenerStats>,
}

impl Sink {
    pub(crate) fn write(&self, entry: &impl Serialize) {
        self.log.write(entry, &self.listener, &self.stats);
    }
}

/// One finished socks5 session.
#[derive(Debug, Serialize)]
pub(crate) struct Socks5Entry<'a> {
    pub(crate) time: String,
    pub(crate) listener: &'a str,
    pub(crate) mode: &'static str,
    /// The door: `socks5`, `socks4` or `http`.
    pub(crate) protocol: &'static str,
    pub(crate) client: String,
    pub(crate) user: Option<&'a str>,
    pub(crate) command: Option<&'static str>,
    pub(crate) destination: Option<String>,
    pub(crate) reply: Option<&'static str>,
    /// HTTP: the last status sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<u16>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration_ms: u64,
    pub(crate) error: Option<String>,
}

/// One finished crc-tcp connection.
#[derive(Debug, Serialize)]
pub(crate) struct CrcTcpEntry<'a> {
    pub(crate) time: String,
    pub(crate) listener: &'a str,
    pub(crate) mode: &'static str,
    pub(crate) client: String,
    pub(crate) frames: u64,
    pub(crate) frames_ok: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration_ms: u64,
    pub(crate) end: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_and_the_file_reopens_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path).unwrap();
        let stats = ListenerStats::default();
        log.write(&serde_json::json!({"n": 1}), "l", &stats);
        let rotated = dir.path().join("access.log.1");
        let written = || std::fs::read_to_string(&path).unwrap_or_default();
        assert!(testkit::wait_until(
            std::time::Duration::from_secs(10),
            || written() == "{\"n\":1}\n"
        ));
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.write(&serde_json::json!({"n": 2}), "l", &stats);
        assert!(testkit::wait_until(
            std::time::Duration::from_secs(10),
            || written() == "{\"n\":2}\n"
        ));
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "{\"n\":1}\n");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A queue whose writer is stuck: the file is a FIFO nobody reads.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &path,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        // Opening a FIFO for writing waits for a reader: give it one that never reads.
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || File::open(path).unwrap())
        };
        let log = AccessLog::open(&path).unwrap();
        let _reader = reader.join().unwrap();
        let stats = ListenerStats::default();
        let line = serde_json::json!({"pad": "x".repeat(1024)});
        let started = std::time::Instant::now();
        for _ in 0..(QUEUE_LEN + 200) {
            log.write(&line, "l", &stats);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // The pipe holds 64 KiB and the queue QUEUE_LEN lines: the rest were dropped.
        assert!(stats.access_log_dropped.load(Ordering::Relaxed) >= 100);
    }
}
