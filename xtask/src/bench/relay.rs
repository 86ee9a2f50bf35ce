//! The SOCKS5 relay figures, each against the direct path in the same run.
//!
//! Load comes from std threads in this process; "through the proxy" means a
//! hand-made RFC 1928 CONNECT ([`crate::socks::connect`]) and then the very
//! same reads and writes as the direct path.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc, Barrier,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{Plan, Results, Row, Target, within_budget};
use crate::{
    harness::Server,
    peers::discard_sink,
    process::{Proc, Stdout},
    socks,
};

const GROUP: &str = "relay";
const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// The write size of the bulk generator.
const CHUNK: usize = 256 * 1024;
/// The deadline of each socket operation.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises this process's soft open-file limit to the hard limit (the server
/// child inherits it) and returns the soft limit now in force.
pub(crate) fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Runs every relay measurement, recording figures and failures.
pub(crate) fn run(server: &Server, plan: &Plan, started: Instant, results: &mut Results) {
    let proxy = server.addr("proxy");
    let pid = server.pid();
    if let Err(error) =
        within_budget(plan, started).and_then(|()| bulk_section(proxy, pid, plan, results))
    {
        results.failed(GROUP, "bulk relay", &error);
    }
}

fn bulk_section(
    proxy: SocketAddr,
    pid: u32,
    plan: &Plan,
    results: &mut Results,
) -> anyhow::Result<()> {
    let (sink, _) = discard_sink(16)?;
    let ticks = clock_ticks();
    let mut cpu = 0.0;
    let mut relayed = 0u64;
    for (streams, least) in [(1usize, 0.70), (8, 0.55)] {
        let per_stream = plan.bulk_bytes / streams as u64;
        let (mut directs, mut vias) = (Vec::new(), Vec::new());
        for _ in 0..plan.bulk_rounds.max(1) {
            directs.push(bulk(None, sink.addr(), streams, per_stream, plan.bulk_cap)?);
            let before = cpu_seconds(pid, ticks)?;
            let via = bulk(Some(proxy), sink.addr(), streams, per_stream, plan.bulk_cap)?;
            cpu += cpu_seconds(pid, ticks)? - before;
            relayed += via.bytes;
            vias.push(via);
        }
        let (direct, via) = (median_run(directs), median_run(vias));
        let ratio = via.mib_per_sec() / direct.mib_per_sec();
        let label = if streams == 1 {
            "1 stream"
        } else {
            "8 streams"
        };
        results.rows.push(
            Row::new(
                GROUP,
                format!("bulk {label}, direct"),
                direct.mib_per_sec(),
                "MiB/s",
            )
            .note(direct.describe()),
        );
        results.rows.push(
            Row::new(
                GROUP,
                format!("bulk {label}, through the proxy"),
                via.mib_per_sec(),
                "MiB/s",
            )
            .note(via.describe()),
        );
        results.rows.push(
            Row::new(GROUP, format!("bulk {label}, proxy / direct"), ratio, "x")
                .target(Target::at_least(ratio, least, format!(">= {least:.2}x"))),
        );
    }
    let per_gib = cpu / (relayed as f64 / GIB);
    results.rows.push(
        Row::new(GROUP, "server CPU per GiB relayed", per_gib, "s/GiB")
            .target(Target::at_most(per_gib, 0.30, "<= 0.30 s/GiB"))
            .note(format!(
                "utime+stime {cpu:.2}s over {:.2} GiB (clock ticks {ticks}/s)",
                relayed as f64 / GIB
            )),
    );
    Ok(())
}

/// The run with the median rate.
fn median_run(mut runs: Vec<Bulk>) -> Bulk {
    runs.sort_by(|a, b| a.mib_per_sec().total_cmp(&b.mib_per_sec()));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}

/// One bulk run.
pub(super) struct Bulk {
    /// Bytes sent (and read by the sink).
    pub(super) bytes: u64,
    seconds: f64,
    streams: usize,
}

impl Bulk {
    /// The rate.
    pub(super) fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / MIB / self.seconds
    }

    fn describe(&self) -> String {
        format!(
            "{} MiB over {} stream(s) in {:.2}s (median run)",
            self.bytes >> 20,
            self.streams,
            self.seconds
        )
    }
}

/// Writes `per_stream` bytes on each of `streams` connections to `sink`
/// (through `via` if given) and times it until the sink has read them all.
pub(super) fn bulk(
    via: Option<SocketAddr>,
    sink: SocketAddr,
    streams: usize,
    per_stream: u64,
    cap: Duration,
) -> anyhow::Result<Bulk> {
    let barrier = Arc::new(Barrier::new(streams + 1));
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || -> anyhow::Result<u64> {
                let stream = open(via, sink);
                barrier.wait();
                let mut stream = stream?;
                let deadline = Instant::now() + cap;
                let chunk = vec![0x5a_u8; CHUNK];
                let mut sent = 0u64;
                while sent < per_stream && Instant::now() < deadline {
                    let n = (per_stream - sent).min(CHUNK as u64) as usize;
                    stream
                        .write_all(chunk.get(..n).unwrap_or_default())
                        .context("bulk write")?;
                    sent += n as u64;
                }
                // The sink closes after our EOF: then every byte was read.
                stream.shutdown(Shutdown::Write)?;
                let mut rest = [0u8; 64];
                while stream
                    .read(&mut rest)
                    .context("waiting for the sink to close")?
                    > 0
                {}
                Ok(sent)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut bytes = 0;
    for handle in handles {
        bytes += handle
            .join()
            .map_err(|_| anyhow::anyhow!("a bulk thread panicked"))??;
    }
    Ok(Bulk {
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        streams,
    })
}

/// A connection to `target`, through the proxy `via` if given.
pub(super) fn open(via: Option<SocketAddr>, target: SocketAddr) -> anyhow::Result<TcpStream> {
    match via {
        Some(proxy) => socks::connect(proxy, target, IO_TIMEOUT),
        None => {
            let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)
                .with_context(|| format!("cannot connect to {target}"))?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.set_nodelay(true)?;
            Ok(stream)
        }
    }
}

/// One connection-rate run.
pub(super) struct Rate {
    /// Connections completed.
    pub(super) done: u64,
    seconds: f64,
    clients: usize,
    /// Connections that failed.
    pub(super) errors: u64,
    first_error: Option<String>,
}

impl Rate {
    pub(super) fn rate(&self) -> f64 {
        self.done as f64 / self.seconds
    }

    pub(super) fn describe(&self, what: &str) -> String {
        let mut note = format!(
            "{} {what} by {} clients in {:.2}s",
            self.done, self.clients, self.seconds
        );
        if self.errors > 0 {
            note.push_str(&format!(
                "; {} failed, first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or_default()
            ));
        }
        note
    }
}

/// Opens connections to `target` (through `via` if given) from `clients`
/// threads, each doing a 1-byte echo and closing, until `count` connections
/// or the time cap.
pub(super) fn connection_rate(
    via: Option<SocketAddr>,
    target: SocketAddr,
    clients: usize,
    count: u64,
    cap: Duration,
) -> anyhow::Result<Rate> {
    let budget = Arc::new(AtomicI64::new(i64::try_from(count).unwrap_or(i64::MAX)));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (budget, errors, first_error, barrier) = (
                Arc::clone(&budget),
                Arc::clone(&errors),
                Arc::clone(&first_error),
                Arc::clone(&barrier),
            );
            thread::spawn(move || {
                barrier.wait();
                let deadline = Instant::now() + cap;
                let mut done = 0u64;
                while budget.fetch_sub(1, Ordering::Relaxed) > 0 && Instant::now() < deadline {
                    match one_connection(via, target) {
                        Ok(()) => done += 1,
                        Err(error) => {
                            if let Ok(mut first) = first_error.lock() {
                                first.get_or_insert_with(|| format!("{error:#}"));
                            }
                            if errors.fetch_add(1, Ordering::Relaxed) > 1_000 {
                                break;
                            }
                        }
                    }
                }
                done
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let done: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let seconds = start.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    let first_error = first_error.lock().ok().and_then(|e| e.clone());
    if done == 0 {
        bail!(
            "no connection completed: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(Rate {
        done,
        seconds,
        clients,
        errors,
        first_error,
    })
}

/// One tunnel: a byte there and back, then the target's close (the target closes first: see
/// [`crate::peers::echo_once_on`]).
fn one_connection(via: Option<SocketAddr>, target: SocketAddr) -> anyhow::Result<()> {
    let mut stream = open(via, target)?;
    stream.write_all(&[7])?;
    let mut byte = [0u8; 2];
    stream.read_exact(&mut byte[..1]).context("echo")?;
    match stream.read(&mut byte).context("the target's close")? {
        0 => Ok(()),
        n => bail!("{n} bytes after the echo"),
    }
}

/// utime + stime of `pid`, in seconds.
pub(super) fn cpu_seconds(pid: u32, ticks: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses: state is
    // field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<f64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {n}"))
    };
    Ok((field(14)? + field(15)?) / ticks)
}

/// `getconf CLK_TCK`, or the usual 100.
pub(super) fn clock_ticks() -> f64 {
    let mut cmd = Command::new("getconf");
    cmd.arg("CLK_TCK");
    Proc::spawn("getconf", &mut cmd, Stdio::null(), Stdout::Capture)
        .and_then(|p| p.wait(Duration::from_secs(5)))
        .ok()
        .and_then(|done| done.stdout_text().trim().parse().ok())
        .unwrap_or(100.0)
}
