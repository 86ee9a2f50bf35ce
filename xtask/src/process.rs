//! Tools run as child processes with deadlines.
//!
//! [`Proc`] drains the child's output on threads (so a chatty child never
//! blocks on a full pipe), waits for it with a deadline, and kills it by its
//! handle when the deadline passes or the [`Proc`] is dropped. A browser,
//! which starts helpers of its own, runs in a process group of its own that
//! is killed as a whole ([`Proc::spawn_group`]).

use std::{
    ffi::OsStr,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use testkit::{ChildGuard, wait_exit};

/// The most output kept per stream (the tail).
const OUTPUT_CAP: usize = 1 << 20;
/// How long to wait for the output threads once the child has exited.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// Environment variables that would send a tool through another proxy or
/// around ours.
const PROXY_VARS: &[&str] = &[
    "ALL_PROXY",
    "all_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// What to do with the child's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdout {
    /// Keep it (up to the last MiB) in [`Finished::stdout`].
    Capture,
    /// Leave the pipe for the caller ([`Proc::take_stdout`]).
    Take,
    /// Discard it.
    Null,
}

/// A running child process, killed on drop if it is still running.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    /// Killed (its group, for a group) when dropped.
    child: ChildGuard,
    stdout: Option<Receiver<Vec<u8>>>,
    stderr: Option<Receiver<Vec<u8>>>,
    started: Instant,
}

/// A child that exited on time.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// Its stdout, if captured.
    pub(crate) stdout: Vec<u8>,
    /// Its stderr (the tail).
    pub(crate) stderr: Vec<u8>,
    /// From spawn to exit.
    pub(crate) elapsed: Duration,
}

impl Finished {
    /// The last lines of stderr, for an error message.
    pub(crate) fn stderr_tail(&self) -> String {
        tail(&self.stderr, 12)
    }

    /// stdout as text.
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Proc {
    /// Spawns `cmd` with `stdin`, stderr captured and stdout as `stdout` says.
    pub(crate) fn spawn(
        name: &str,
        cmd: &mut Command,
        stdin: Stdio,
        stdout: Stdout,
    ) -> anyhow::Result<Self> {
        Self::start(name, cmd, stdin, stdout, false)
    }

    /// Like [`Proc::spawn`], in a new process group that is killed as a whole.
    pub(crate) fn spawn_group(
        name: &str,
        cmd: &mut Command,
        stdin: Stdio,
        stdout: Stdout,
    ) -> anyhow::Result<Self> {
        Self::start(name, cmd, stdin, stdout, true)
    }

    fn start(
        name: &str,
        cmd: &mut Command,
        stdin: Stdio,
        stdout: Stdout,
        group: bool,
    ) -> anyhow::Result<Self> {
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        if group {
            cmd.process_group(0);
        }
        cmd.stdin(stdin).stderr(Stdio::piped());
        cmd.stdout(match stdout {
            Stdout::Capture | Stdout::Take => Stdio::piped(),
            Stdout::Null => Stdio::null(),
        });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        let stderr = child.stderr.take().map(drain);
        let stdout = match stdout {
            Stdout::Capture => child.stdout.take().map(drain),
            Stdout::Take | Stdout::Null => None,
        };
        Ok(Self {
            name: name.to_owned(),
            child: if group {
                ChildGuard::group(child)
            } else {
                ChildGuard::new(child)
            },
            stdout,
            stderr,
            started: Instant::now(),
        })
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdout pipe, when spawned with [`Stdout::Take`].
    pub(crate) fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's process id.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has exited (it is then reaped).
    pub(crate) fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit. On timeout it is killed
    /// and the error says so, with the tail of its stderr.
    pub(crate) fn wait(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let status = wait_exit(&mut self.child, timeout)?;
        let elapsed = self.started.elapsed();
        let Some(status) = status else {
            self.kill();
            let stderr = collect(self.stderr.take());
            bail!(
                "{} did not finish within {timeout:?}; killed. stderr: {}",
                self.name,
                tail(&stderr, 8)
            );
        };
        let stdout = collect(self.stdout.take());
        let stderr = collect(self.stderr.take());
        Ok(Finished {
            status,
            stdout,
            stderr,
            elapsed,
        })
    }

    /// Kills the child (its group, for a group) if it is still running, and reaps it.
    pub(crate) fn kill(&mut self) {
        self.child.kill_and_reap();
    }
}

/// Runs `cmd` with the terminal as its stdout and stderr, waiting up to
/// `timeout`; on timeout (or if this thread unwinds) the child is killed.
pub(crate) fn run_inherited(
    name: &str,
    cmd: &mut Command,
    timeout: Duration,
) -> anyhow::Result<ExitStatus> {
    let child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let mut child = ChildGuard::new(child);
    match wait_exit(&mut child, timeout)? {
        Some(status) => Ok(status),
        // Dropping the guard kills the child.
        None => bail!("{name} did not finish within {timeout:?}; killed"),
    }
}

/// Reads `pipe` to its end on a thread, keeping the last [`OUTPUT_CAP`] bytes.
fn drain(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel(1);
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(buf.get(..n).unwrap_or_default());
                    if kept.len() > OUTPUT_CAP {
                        kept.drain(..kept.len() - OUTPUT_CAP);
                    }
                }
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

/// The output a drain thread collected, or nothing if a grandchild still
/// holds the pipe open after [`DRAIN_GRACE`].
fn collect(rx: Option<Receiver<Vec<u8>>>) -> Vec<u8> {
    rx.and_then(|rx| rx.recv_timeout(DRAIN_GRACE).ok())
        .unwrap_or_default()
}

/// The last `lines` lines of `bytes`, on one line.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    let joined = all.get(start..).unwrap_or_default().join(" | ");
    if joined.is_empty() {
        "(empty)".to_owned()
    } else {
        joined
    }
}

/// Finds `tool` on `PATH`, or fails with the command that installs it.
pub(crate) fn require(tool: &str, install: &str) -> anyhow::Result<PathBuf> {
    find_on_path(tool).with_context(|| format!("{tool} not found: {install}"))
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let tool_path = Path::new(tool);
    if tool_path.is_absolute() {
        return tool_path.is_file().then(|| tool_path.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(OsStr::new(tool)))
        .find(|candidate| candidate.is_file())
}
