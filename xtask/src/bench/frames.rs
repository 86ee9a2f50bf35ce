//! The crc-tcp figures: `client bench --json` against the discard listeners
//! (acks on and off), and, as the limit, a raw loopback stream of the same
//! total size from this process into a read-and-discard sink.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Plan, Results, Row, Target, within_budget};
use crate::{
    harness::{Binaries, Server},
    peers::discard_sink,
    process::{Proc, Stdout},
};

const GROUP: &str = "crc-tcp";
const MIB: f64 = 1024.0 * 1024.0;
/// Header and CRC-32 trailer.
const OVERHEAD: u64 = 12 + 4;
/// The raw stream's write size.
const RAW_CHUNK: usize = 64 * 1024;

/// Runs every crc-tcp measurement.
pub(crate) fn run(
    bins: &Binaries,
    server: &Server,
    plan: &Plan,
    started: Instant,
    results: &mut Results,
) {
    let sink = match discard_sink(2) {
        Ok((sink, _)) => sink,
        Err(error) => {
            results.failed(GROUP, "raw sink", &error);
            return;
        }
    };
    for (size, frames) in [
        (64u64, plan.frames[0]),
        (4096, plan.frames[1]),
        (65536, plan.frames[2]),
    ] {
        let label = size_label(size);
        let wire = frames * (size + OVERHEAD);
        // The limit: the best of a few raw runs, since one run on a shared VM
        // can come out at half the machine's rate.
        let best_raw = || -> anyhow::Result<f64> {
            let mut best: f64 = 0.0;
            for _ in 0..plan.bulk_rounds.max(1) {
                best = best.max(raw_stream(sink.addr(), wire)?);
            }
            Ok(best)
        };
        let raw = match within_budget(plan, started).and_then(|()| best_raw()) {
            Ok(mib) => {
                results.rows.push(
                    Row::new(
                        GROUP,
                        format!("raw loopback stream ({label} frames' worth)"),
                        mib,
                        "MiB/s",
                    )
                    .note(format!(
                        "{} MiB in {} KiB writes, best of {}",
                        wire >> 20,
                        RAW_CHUNK >> 10,
                        plan.bulk_rounds.max(1)
                    )),
                );
                mib
            }
            Err(error) => {
                results.failed(GROUP, &format!("raw loopback stream ({label})"), &error);
                continue;
            }
        };
        for version in [1u8, 2] {
            for ack in [false, true] {
                let metric = format!(
                    "v{version} {label}, acks {}",
                    if ack { "on" } else { "off" }
                );
                let listener = if ack { "frames-ack" } else { "frames-noack" };
                let measured = within_budget(plan, started).and_then(|()| {
                    client_bench(
                        bins,
                        server.addr(listener),
                        version,
                        size,
                        frames,
                        if ack { Acks::Wait } else { Acks::Off },
                        plan.client_cap,
                    )
                });
                match measured {
                    Ok(report) => {
                        record(results, &metric, size, ack, raw, &report);
                        let mut raw_record = report;
                        if let Value::Object(map) = &mut raw_record {
                            map.insert("version".into(), version.into());
                            map.insert("size".into(), size.into());
                            map.insert("ack".into(), ack.into());
                        }
                        results.raw.push(raw_record);
                    }
                    Err(error) => results.failed(GROUP, &metric, &error),
                }
            }
        }
    }
    ack_latency(bins, server, plan, started, results);
}

/// Ack latency without queueing: v2 64 B frames with at most `window` frames
/// in flight (1 is ping-pong: one frame, one ack, one network round trip).
fn ack_latency(
    bins: &Binaries,
    server: &Server,
    plan: &Plan,
    started: Instant,
    results: &mut Results,
) {
    let frames = plan.frames[1] / 20;
    for window in [1u32, 64] {
        let metric = format!("v2 64 B acks, window {window}");
        let measured = within_budget(plan, started).and_then(|()| {
            client_bench(
                bins,
                server.addr("frames-ack"),
                2,
                64,
                frames,
                Acks::Window(window),
                plan.client_cap,
            )
        });
        match measured {
            Ok(report) => {
                let number = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
                let note = format!(
                    "{} frames at {:.0} frames/s",
                    report["frames"],
                    number("frames_per_sec")
                );
                results.rows.push(
                    Row::new(
                        GROUP,
                        format!("{metric}: ack p50"),
                        number("ack_p50_us"),
                        "us",
                    )
                    .note(note),
                );
                results.rows.push(Row::new(
                    GROUP,
                    format!("{metric}: ack p99"),
                    number("ack_p99_us"),
                    "us",
                ));
            }
            Err(error) => results.failed(GROUP, &metric, &error),
        }
    }
}

fn size_label(size: u64) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Turns one `client bench --json` object into rows.
fn record(results: &mut Results, metric: &str, size: u64, ack: bool, raw_mib: f64, report: &Value) {
    let number = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
    let fps = number("frames_per_sec");
    let seconds = number("seconds");
    let wire_mib = number("wire_bytes") / MIB / seconds;
    let ratio = wire_mib / raw_mib;
    let errors = report["errors"].as_u64().unwrap_or(0);
    let mut note = format!(
        "{} frames, {:.0} MiB/s payload, {wire_mib:.0} MiB/s wire = {ratio:.2}x raw",
        report["frames"],
        number("mib_per_sec")
    );
    if ack {
        note.push_str(&format!(
            "; ack p50 {} us, p99 {} us",
            report["ack_p50_us"], report["ack_p99_us"]
        ));
    }
    if errors > 0 {
        note.push_str(&format!("; {errors} errors"));
    }
    let mut row = Row::new(GROUP, metric, fps, "frames/s").note(note);
    // Targets: one connection, no acks, >= 5M frames/s at 64 B and >= 0.8x
    // raw at 4 KiB; with acks at least half of that.
    let half = if ack { 0.5 } else { 1.0 };
    if size == 64 {
        let least = 5_000_000.0 * half;
        row = row.target(Target::at_least(
            fps,
            least,
            format!(">= {:.1}M/s", least / 1e6),
        ));
    }
    results.rows.push(row);
    if size == 4096 {
        let least = 0.8 * half;
        results.rows.push(
            Row::new(GROUP, format!("{metric}: wire / raw"), ratio, "x").target(Target::at_least(
                ratio,
                least,
                format!(">= {least:.1}x raw"),
            )),
        );
    }
}

/// How `client bench` treats acks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Acks {
    /// Not read.
    Off,
    /// Read and checked, with the client sending as fast as it can.
    Wait,
    /// Read and checked, with at most this many frames in flight.
    Window(u32),
}

/// `client bench --json` with one connection and CRC-32 frames.
pub(super) fn client_bench(
    bins: &Binaries,
    addr: SocketAddr,
    version: u8,
    size: u64,
    frames: u64,
    acks: Acks,
    cap: Duration,
) -> anyhow::Result<Value> {
    let mut cmd = Command::new(&bins.client);
    cmd.args(["bench", "--addr", &addr.to_string()])
        .args(["--frames", &frames.to_string(), "--size", &size.to_string()])
        .args([
            "--connections",
            "1",
            "--version",
            &version.to_string(),
            "--crc-size",
            "4",
        ])
        .args(["--json", "--timeout", "10s"]);
    match acks {
        Acks::Off => {}
        Acks::Wait => {
            cmd.arg("--wait-ack");
        }
        Acks::Window(window) => {
            cmd.args(["--wait-ack", "--window", &window.to_string()]);
        }
    }
    let done = Proc::spawn("client bench", &mut cmd, Stdio::null(), Stdout::Capture)?.wait(cap)?;
    if !done.status.success() {
        bail!(
            "client bench exited {}: {}",
            done.status,
            done.stderr_tail()
        );
    }
    let text = done.stdout_text();
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("client bench printed no JSON: {text:?}"))?;
    serde_json::from_str(line).with_context(|| format!("client bench printed {line:?}"))
}

/// Writes `total` bytes to the sink on one connection; MiB/s until the sink
/// has read them all.
fn raw_stream(sink: SocketAddr, total: u64) -> anyhow::Result<f64> {
    let mut stream = TcpStream::connect_timeout(&sink, Duration::from_secs(5))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let chunk = vec![0xa5_u8; RAW_CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(RAW_CHUNK as u64) as usize;
        stream.write_all(chunk.get(..n).unwrap_or_default())?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 64];
    while stream.read(&mut rest)? > 0 {}
    Ok(total as f64 / MIB / start.elapsed().as_secs_f64())
}
