//! The shared harness: the workspace root, the one release build, and the
//! `server` child with its JSON log events.
//!
//! [`Server::start`] writes a temporary config (every listener on
//! `127.0.0.1:0`), starts `server --log-format json`, parses its stderr lines
//! on a reader thread into [`Events`], and waits, with a deadline, for one
//! `listening` event per listener to learn the real addresses. Dropping the
//! [`Server`] kills the child by its handle; [`Server::stop`] sends SIGTERM
//! and waits for the exit status with a deadline.

use std::{
    collections::HashMap,
    ffi::OsString,
    fs::File,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use testkit::{ChildGuard, wait_exit};

use crate::process::{Proc, Stdout};

/// How long the release build may take (other builds may hold cargo's lock).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long the server may take to log every `listening` event.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The workspace root: the parent of this crate's manifest directory.
pub(crate) fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo that runs us (`$CARGO`), or `cargo` from `PATH`.
pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Where xtask keeps its logs: `target/xtask` under the root.
pub(crate) fn log_dir() -> anyhow::Result<PathBuf> {
    let dir = root().join("target").join("xtask");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The release binaries under test.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    /// `server`.
    pub(crate) server: PathBuf,
    /// `client`.
    pub(crate) client: PathBuf,
}

/// Builds `server` and `client` in release mode, once, and returns the
/// paths cargo reports for them (so any `CARGO_TARGET_DIR` is honoured).
pub(crate) fn build_release() -> anyhow::Result<Binaries> {
    let mut found = cargo_build_release(&["server", "client"])?;
    let mut take = |name: &str| {
        found
            .remove(name)
            .with_context(|| format!("cargo built no `{name}` executable"))
    };
    Ok(Binaries {
        server: take("server")?,
        client: take("client")?,
    })
}

/// `cargo build --release -p PACKAGE...`: the executables built, by name.
pub(crate) fn cargo_build_release(packages: &[&str]) -> anyhow::Result<HashMap<String, PathBuf>> {
    println!("building release {} ...", packages.join(", "));
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root()).args(["build", "--release"]);
    for package in packages {
        cmd.args(["-p", package]);
    }
    cmd.arg("--message-format=json-render-diagnostics");
    let built = Proc::spawn("cargo build", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(BUILD_TIMEOUT)?;
    if !built.status.success() {
        bail!(
            "cargo build --release -p {} failed ({}): {}",
            packages.join(" -p "),
            built.status,
            built.stderr_tail()
        );
    }
    let mut found: HashMap<String, PathBuf> = HashMap::new();
    for line in built.stdout_text().lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(found)
}

/// The server's log events, as parsed JSON objects, in order.
///
/// A line that is not JSON (a panic message, say) is kept as a string.
#[derive(Debug, Default)]
pub(crate) struct Events {
    state: Mutex<EventsState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct EventsState {
    list: Vec<Value>,
    closed: bool,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, EventsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of events so far: a mark for [`Events::since`].
    pub(crate) fn mark(&self) -> usize {
        self.lock().list.len()
    }

    /// The events from `mark` on.
    pub(crate) fn since(&self, mark: usize) -> Vec<Value> {
        self.lock().list.get(mark..).unwrap_or_default().to_vec()
    }

    /// The first event from `mark` on that satisfies `pred`, waiting until
    /// `timeout` passes or the log ends.
    pub(crate) fn wait_for(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let mut next = mark;
        loop {
            if let Some(found) = state
                .list
                .get(next..)
                .unwrap_or_default()
                .iter()
                .find(|e| pred(e))
            {
                return Some(found.clone());
            }
            next = state.list.len().max(mark);
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn push(&self, event: Value) {
        self.lock().list.push(event);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

/// An event's `message` field ("" if none).
pub(crate) fn message(event: &Value) -> &str {
    event["message"].as_str().unwrap_or_default()
}

/// How to start a server.
#[derive(Debug)]
pub(crate) struct ServerSpec<'a> {
    /// The config text.
    pub(crate) config: &'a str,
    /// The listener names to wait for.
    pub(crate) listeners: &'a [&'a str],
    /// `--log-level`.
    pub(crate) log_level: &'a str,
    /// Events kept in memory (all are written to the log file).
    pub(crate) keep: fn(&Value) -> bool,
    /// The log file's name under `target/xtask`.
    pub(crate) log_name: &'a str,
}

/// A running `server` child; killed on drop if still running.
#[derive(Debug)]
pub(crate) struct Server {
    child: ChildGuard,
    events: Arc<Events>,
    addrs: HashMap<String, SocketAddr>,
    log_path: PathBuf,
}

impl Server {
    /// Writes `spec.config` to `dir/server.toml`, starts the server and
    /// waits for the `listening` event of every listener in `spec.listeners`.
    pub(crate) fn start(binary: &Path, dir: &Path, spec: &ServerSpec<'_>) -> anyhow::Result<Self> {
        let config_path = dir.join("server.toml");
        std::fs::write(&config_path, spec.config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log_path = log_dir()?.join(spec.log_name);
        let mut log_file = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json", "--log-level", spec.log_level])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let events = Arc::new(Events::default());
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let sink = Arc::clone(&events);
        let keep = spec.keep;
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let _ = log_file.write_all(&line);
                let text = String::from_utf8_lossy(&line);
                let event = serde_json::from_str::<Value>(text.trim_end())
                    .unwrap_or_else(|_| Value::String(text.trim_end().to_owned()));
                if keep(&event) || message(&event) == "listening" {
                    sink.push(event);
                }
                line.clear();
            }
            sink.close();
        });
        let mut server = Self {
            child: ChildGuard::new(child),
            events,
            addrs: HashMap::new(),
            log_path,
        };
        server.wait_listening(spec.listeners)?;
        Ok(server)
    }

    fn wait_listening(&mut self, names: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for name in names {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.events.wait_for(0, left, |e| {
                message(e) == "listening" && e["listener"].as_str() == Some(name)
            });
            let Some(event) = event else {
                let exited = self.child.try_wait().ok().flatten();
                let last: Vec<String> = self
                    .events
                    .since(0)
                    .iter()
                    .rev()
                    .take(5)
                    .map(Value::to_string)
                    .collect();
                bail!(
                    "the server did not log `listening` for {name:?} within {STARTUP_TIMEOUT:?} \
                     (exited: {exited:?}); last log lines: {last:?}; full log: {}",
                    self.log_path.display()
                );
            };
            let addr: SocketAddr = event["addr"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("`listening` event without a socket address: {event}"))?;
            self.addrs.insert((*name).to_owned(), addr);
        }
        Ok(())
    }

    /// The bound address of listener `name`.
    pub(crate) fn addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .get(name)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The server's log events.
    pub(crate) fn events(&self) -> &Events {
        &self.events
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the full log is written.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the server is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit. Returns the
    /// status and how long the exit took; on timeout the child is killed and
    /// this fails.
    pub(crate) fn stop(&mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server had already exited ({status}) before SIGTERM");
        }
        let sent = Instant::now();
        kill_process(Pid::from_child(&self.child), Signal::TERM).context("cannot send SIGTERM")?;
        match wait_exit(&mut self.child, timeout)? {
            Some(status) => Ok((status, sent.elapsed())),
            None => {
                self.child.kill_and_reap();
                bail!("the server did not exit within {timeout:?} of SIGTERM; killed");
            }
        }
    }
}

/// A TOML literal string holding `path`.
pub(crate) fn toml_path(path: &Path) -> String {
    format!("'{}'", path.display())
}
