//! Crash durability: a collector of its own (one crc-tcp listener, a file
//! sink with `sync = "always"`) takes frames with acks from four client
//! connections (random payloads of 1 B – 64 KiB from a seed printed in the
//! result); it is killed with SIGKILL at a random moment and restarted on
//! the same file, twenty times. After each restart the file, read from the
//! start, must hold every frame acked ok before the kill, byte for byte and
//! in each connection's order, and nothing unreadable: frames sent but not
//! acked may or may not be there, and a torn tail left by the kill must
//! have been cut by the restart (and logged). Kills rarely tear a write, so
//! every other round whose kill left the file whole appends what such a
//! kill leaves (the first bytes of a frame) before the restart.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use proto::{
    ACK_FRAME_LEN, AckStatus, CrcSize, Decoded, HEADER_LEN, Limits, Version, decode_ack,
    decode_frame, encode_frame,
};
use rustix::process::{Pid, Signal, kill_process};
use testkit::{SplitMix64, wait_until};

use super::Ctx;
use crate::harness::{self, Server, ServerSpec, message};

/// Kill and restart this many times.
const ROUNDS: u64 = 20;
/// The whole scenario must end within this.
const BUDGET: Duration = Duration::from_secs(60);
/// Frames in flight (sent, not yet acked) at most.
const WINDOW: usize = 32;
/// The largest payload.
const MAX_PAYLOAD: u64 = 64 * 1024;
/// Connections at once (their frames share the sink's batches).
const CONNS: usize = 4;
/// The listener's name.
const LISTENER: &str = "crash";

const CONFIG: &str = r#"[server]
drain_timeout = "2s"

[[listener]]
name = "crash"
mode = "crc-tcp"
bind = "127.0.0.1:0"
ack = true
handler = { type = "file", path = {SINK}, sync = "always" }
"#;

/// The first payload byte of the frames of connection `conn` in round
/// `round`, so that every frame names its stream.
fn stream_id(round: u64, conn: usize) -> u8 {
    (round as usize * CONNS + conn) as u8
}

/// Frame `index` of connection `conn` in round `round`: a seeded payload of
/// 1 B – 64 KiB whose first byte is [`stream_id`].
fn frame(seed: u64, round: u64, conn: usize, index: u64) -> anyhow::Result<Vec<u8>> {
    let mut rng = SplitMix64::new(seed ^ (round << 48) ^ ((conn as u64) << 40) ^ index);
    let len = 1 + rng.below(MAX_PAYLOAD) as usize;
    let mut payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    if let Some(first) = payload.first_mut() {
        *first = stream_id(round, conn);
    }
    let mut out = Vec::with_capacity(len + 16);
    encode_frame(Version::V2, CrcSize::Crc32, &payload, &mut out)?;
    Ok(out)
}

/// What one connection sent and had acked ok.
struct Stream {
    sent: Vec<Vec<u8>>,
    acked: usize,
}

/// Totals for the report.
#[derive(Default)]
struct Figures {
    sent: usize,
    acked: usize,
    stored: usize,
    torn: usize,
    torn_bytes: u64,
    simulated: usize,
    cut_logged: usize,
}

/// The scenario: see the module docs.
pub(crate) fn crash_durability(ctx: &mut Ctx) -> anyhow::Result<String> {
    let started = Instant::now();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let dir = ctx.dir.path().join("crash");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let sink = dir.join("frames.bin");
    let config = CONFIG.replace("{SINK}", &harness::toml_path(&sink));
    let start = || -> anyhow::Result<Server> {
        Server::start(
            &ctx.bins.server,
            &dir,
            &ServerSpec {
                config: &config,
                listeners: &[LISTENER],
                log_level: "info",
                keep: |e| message(e).contains("torn tail"),
                log_name: "e2e-crash-server.log",
            },
        )
    };
    let mut rng = SplitMix64::new(seed);
    // Indexed by stream_id.
    let mut streams: Vec<Stream> = Vec::new();
    let mut figures = Figures::default();
    let mut server = start()?;
    for round in 0..ROUNDS {
        if started.elapsed() > BUDGET {
            bail!("round {round}: the budget of {BUDGET:?} is spent (seed {seed})");
        }
        let kill_after = 1 + rng.below(200) as usize;
        let jitter = Duration::from_micros(rng.below(500));
        let outcome = crash_round(&mut server, seed, round, kill_after, jitter)
            .with_context(|| format!("round {round} (seed {seed})"))?;
        drop(server); // reaps the killed child
        for stream in outcome {
            figures.sent += stream.sent.len();
            figures.acked += stream.acked;
            streams.push(stream);
        }
        let before = stored_frames(&sink)?;
        if before.trailing > 0 {
            figures.torn += 1;
            figures.torn_bytes += before.trailing as u64;
        } else if round % 2 == 1 {
            // A kill tears a write rarely (the sink spends its time in
            // fsync, not in write), so every other whole file gets the
            // tail such a kill leaves: the first bytes of a frame.
            let torn = frame(seed, round, CONNS, 0)?;
            let cut = 1 + rng.below(torn.len() as u64 - 1) as usize;
            tear(&sink, torn.get(..cut).unwrap_or_default())?;
            figures.simulated += 1;
        }
        server = start().with_context(|| format!("restart after round {round}"))?;
        figures.cut_logged += server
            .events()
            .since(0)
            .iter()
            .filter(|e| message(e).contains("torn tail"))
            .count();
        figures.stored =
            check(&sink, &streams).with_context(|| format!("after round {round} (seed {seed})"))?;
    }
    let (status, _) = server.stop(Duration::from_secs(10))?;
    if !status.success() {
        bail!("the last server exited with {status}");
    }
    figures.stored = check(&sink, &streams).context("after the last stop")?;
    if figures.cut_logged != figures.torn + figures.simulated {
        bail!(
            "{} kills left a torn tail and {} were simulated, but {} restarts logged a cut",
            figures.torn,
            figures.simulated,
            figures.cut_logged
        );
    }
    Ok(format!(
        "{ROUNDS} kill -9 rounds of {CONNS} connections in {:.1}s (seed {seed}): {} frames sent, \
         {} acked ok, {} in the file (every acked one, in order, byte for byte); {} kills tore a \
         write ({} bytes) and {} torn tails were simulated, each cut on restart",
        started.elapsed().as_secs_f64(),
        figures.sent,
        figures.acked,
        figures.stored,
        figures.torn,
        figures.torn_bytes,
        figures.simulated
    ))
}

/// Sends SIGKILL to the server once, from the ack reader that sees the
/// chosen ack (so the kill lands while the server handles the next frames,
/// not a polling period later).
struct Trigger {
    pid: Pid,
    after: usize,
    jitter: Duration,
    total: AtomicUsize,
    fired: AtomicBool,
}

impl Trigger {
    /// Counts one ok ack; fires on the chosen one.
    fn acked(&self) {
        if self.total.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            self.fire();
        }
    }

    /// Sends SIGKILL `jitter` from now, once.
    fn fire(&self) {
        if self.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        // A spin, for microseconds: sleep's granularity is coarser.
        let until = Instant::now() + self.jitter;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        let _ = kill_process(self.pid, Signal::KILL);
    }
}

/// One connection's threads: a writer (at most [`WINDOW`] frames unacked)
/// and an ack reader that counts the ok acks in `acked`.
struct Conn {
    writer: thread::JoinHandle<anyhow::Result<Vec<Vec<u8>>>>,
    reader: thread::JoinHandle<anyhow::Result<()>>,
    acked: Arc<AtomicUsize>,
}

fn connect(
    addr: SocketAddr,
    seed: u64,
    round: u64,
    conn: usize,
    trigger: &Arc<Trigger>,
) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let (slot_tx, slot_rx) = mpsc::sync_channel::<()>(WINDOW);
    let acked = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (acked, trigger) = (Arc::clone(&acked), Arc::clone(trigger));
        thread::spawn(move || -> anyhow::Result<()> {
            let mut bytes = [0u8; ACK_FRAME_LEN];
            loop {
                if reader.read_exact(&mut bytes).is_err() {
                    return Ok(()); // the server died
                }
                let Ok(Decoded::Done(ack, _)) = decode_ack(&bytes) else {
                    bail!("not an ack: {bytes:02x?}");
                };
                let expected = acked.load(Ordering::SeqCst) as u64;
                if (ack.status, ack.seq) != (AckStatus::Ok, expected) {
                    bail!("ack {ack:?}, expected ok for seq {expected}");
                }
                acked.fetch_add(1, Ordering::SeqCst);
                trigger.acked();
                let _ = slot_rx.recv_timeout(Duration::from_secs(10));
            }
        })
    };
    let writer = thread::spawn(move || -> anyhow::Result<Vec<Vec<u8>>> {
        let mut sent = Vec::new();
        for index in 0..1_000_000 {
            if slot_tx.send(()).is_err() {
                break;
            }
            let frame = frame(seed, round, conn, index)?;
            // Sent from the first byte on: a frame cut short by the kill
            // may or may not be in the file.
            sent.push(frame.clone());
            if writer.write_all(&frame).is_err() {
                break;
            }
        }
        Ok(sent)
    });
    Ok(Conn {
        writer,
        reader,
        acked,
    })
}

/// Streams frames on [`CONNS`] connections until the server dies; sends it
/// SIGKILL `jitter` after `kill_after` frames in all are acked ok.
fn crash_round(
    server: &mut Server,
    seed: u64,
    round: u64,
    kill_after: usize,
    jitter: Duration,
) -> anyhow::Result<Vec<Stream>> {
    let addr: SocketAddr = server.addr(LISTENER);
    let trigger = Arc::new(Trigger {
        pid: Pid::from_raw(server.pid() as i32).context("the server has no pid")?,
        after: kill_after,
        jitter,
        total: AtomicUsize::new(0),
        fired: AtomicBool::new(false),
    });
    let conns = (0..CONNS)
        .map(|conn| connect(addr, seed, round, conn, &trigger))
        .collect::<anyhow::Result<Vec<_>>>();
    // Whatever happened, the server dies before this returns.
    let conns = match conns {
        Ok(conns) => conns,
        Err(error) => {
            trigger.fire();
            return Err(error);
        }
    };
    wait_until(Duration::from_secs(10), || {
        trigger.fired.load(Ordering::SeqCst) || conns.iter().any(|c| c.reader.is_finished())
    });
    let reached = trigger.total.load(Ordering::SeqCst);
    trigger.fire();
    let mut streams = Vec::with_capacity(CONNS);
    for conn in conns {
        let read = conn
            .reader
            .join()
            .map_err(|_| anyhow::anyhow!("an ack reader panicked"))?;
        let sent = conn
            .writer
            .join()
            .map_err(|_| anyhow::anyhow!("a frame writer panicked"))??;
        read?;
        streams.push(Stream {
            sent,
            acked: conn.acked.load(Ordering::SeqCst),
        });
    }
    if reached < kill_after {
        bail!("only {reached} of {kill_after} frames acked within 10 s");
    }
    Ok(streams)
}

/// Appends `tail` to the sink file, as a write cut short by a kill would.
fn tear(path: &Path, tail: &[u8]) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(tail))
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// The complete frames of the sink file, from the start.
struct Stored {
    frames: Vec<Vec<u8>>,
    /// Bytes after the last complete frame.
    trailing: usize,
}

fn stored_frames(path: &Path) -> anyhow::Result<Stored> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rest = bytes.as_slice();
    let mut frames = Vec::new();
    loop {
        match decode_frame(rest, &Limits::default()) {
            Ok(Decoded::Done(frame, used)) => {
                if !frame.crc_ok() {
                    bail!(
                        "frame {} (offset {}) has a bad CRC",
                        frames.len(),
                        bytes.len() - rest.len()
                    );
                }
                frames.push(frame.raw.to_vec());
                rest = rest.get(used..).unwrap_or_default();
            }
            Ok(Decoded::NeedMore(_)) => break,
            Err(error) => bail!(
                "an unreadable header after {} frames (offset {}): {error}",
                frames.len(),
                bytes.len() - rest.len()
            ),
        }
    }
    Ok(Stored {
        frames,
        trailing: rest.len(),
    })
}

/// Checks the file after a restart: readable to its end, and stream by
/// stream (told apart by the first payload byte) a prefix of what was sent
/// that covers every frame acked ok. Returns the number of frames.
fn check(path: &Path, streams: &[Stream]) -> anyhow::Result<usize> {
    let stored = stored_frames(path)?;
    if stored.trailing > 0 {
        bail!(
            "{} bytes of a torn frame after {} frames: the restart did not cut them",
            stored.trailing,
            stored.frames.len()
        );
    }
    let mut kept = vec![0usize; streams.len()];
    for (number, frame) in stored.frames.iter().enumerate() {
        let id = frame
            .get(HEADER_LEN)
            .copied()
            .map_or(usize::MAX, usize::from);
        let (Some(stream), Some(next)) = (streams.get(id), kept.get_mut(id)) else {
            bail!("frame {number} names no stream that was sent");
        };
        if stream.sent.get(*next) != Some(frame) {
            bail!("frame {number} is not frame {next} of stream {id}, the next one it sent");
        }
        *next += 1;
    }
    for (id, (stream, kept)) in streams.iter().zip(&kept).enumerate() {
        if *kept < stream.acked {
            bail!(
                "stream {id}: {} frames acked ok, only the first {kept} are in the file",
                stream.acked
            );
        }
    }
    Ok(stored.frames.len())
}
